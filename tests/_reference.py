"""Independent NumPy float64 re-derivations of the losses, written from their formulas in
docs/dmdl.md and docs/mult.md (explicit loops where that is clearer): the references of the loss
tests and of the method-step compositions (tests/test_method_steps.py). No dmdl code here."""

import math

import numpy as np


def np_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_memory_ce(f: np.ndarray, memory: np.ndarray, targets: np.ndarray, temp: float = 0.05) -> float:
    """ClusterNCE: mean over rows of -sum_k t_ik log softmax(f_hat M^T / T)_k; ``targets`` (B,)
    row ids (hard) or (B, K) soft rows."""
    logp = np_log_softmax(np_normalize(f) @ memory.T / temp)
    if targets.ndim == 1:
        return float(-logp[np.arange(len(f)), targets].mean())
    return float(-(targets * logp).sum(axis=1).mean())


def np_triplet(x: np.ndarray, y: np.ndarray, margin: float) -> float:
    """Explicit-loop re-derivation of the reference TripletLoss (raw features, diagonal in the positives)."""
    n = len(x)
    terms = []
    for i in range(n):
        d = [math.sqrt(max(float(x[i] @ x[i] + x[j] @ x[j] - 2 * x[i] @ x[j]), 1e-12)) for j in range(n)]
        pos = [d[j] for j in range(n) if y[j] == y[i]]
        neg = [d[j] for j in range(n) if y[j] != y[i]]
        if not neg:
            continue
        terms.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(terms) / len(terms) if terms else 0.0


def np_bandwidth(z: np.ndarray) -> float:
    m = len(z)
    d2 = np.array([[float(np.sum((z[i] - z[j]) ** 2)) for j in range(m)] for i in range(m)])
    return d2.sum() / (m * m - m) / 2.0 ** 2


def np_mmd(s: np.ndarray, t: np.ndarray, bandwidth: float | None = None) -> float:
    """Explicit-loop DAN_new: Z=[S;T], D² by differences, b from D² (unless given), 5 summed kernels."""
    n = len(s)
    z = np.concatenate([s, t])
    m = 2 * n
    b = np_bandwidth(z) if bandwidth is None else bandwidth
    ss = tt = st = ts = 0.0
    for i in range(m):
        for j in range(m):
            d2 = float(np.sum((z[i] - z[j]) ** 2))
            k = sum(np.exp(-d2 / (b * 2.0 ** q)) for q in range(5))
            if i < n and j < n and i != j:
                ss += k
            elif i >= n and j >= n and i != j:
                tt += k
            elif i < n <= j:
                st += k
            elif j < n <= i:
                ts += k
    return (ss + tt) / (n * (n - 1)) - (st + ts) / n ** 2


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_cai(f, mv, mi, ids_v, ids_i, prior_v, targets, temp=0.05) -> float:
    fh = f / np.linalg.norm(f, axis=1, keepdims=True)
    b, k = targets.shape
    qv, qi = np.zeros((b, k)), np.zeros((b, k))
    qv[:, ids_v] = np_softmax(fh @ mv.T / temp)
    qi[:, ids_i] = np_softmax(fh @ mi.T / temp)
    p = prior_v * qv + (1 - prior_v) * qi
    total = 0.0
    for i in range(b):
        for c in range(k):
            if targets[i, c] > 0:
                total -= targets[i, c] * np.log(p[i, c])
    return total / b


def np_topk(f, mem, k, temp):
    logits = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ mem.T / temp
    out = np.zeros_like(logits)
    for i, row in enumerate(logits):
        keep = np.argsort(-row)[:k]
        e = np.exp(row[keep] - row[keep].max())
        out[i, keep] = e / e.sum()
    return out


def np_sce(pred, target, sharpen=0.2):
    q = np.exp(target / sharpen - (target / sharpen).max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    logp = pred - pred.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -(q * logp).sum(1).mean()
