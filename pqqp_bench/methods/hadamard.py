"""Hadamard matrices of the sizes LLMs use, and orthonormal (randomised) rotations built from them.

A Hadamard matrix of order n has entries +-1 and H H^T = n I. Sylvester's construction gives n = 2^k; the
widths of real models are often 2^k times a small factor (SmolLM2: 576 = 36*16, 1536 = 12*128; Llama-3-8B:
14336 = 28*512), so the factor comes from Paley's constructions over a prime q (order q+1 for q = 3 mod 4,
order 2(q+1) for q = 1 mod 4) and the two are combined by a Kronecker product, as QuaRot does with its
stored matrices (Ashkboos et al. 2024, App. A).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..errors import PqqpError


def is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, int(q**0.5) + 1))


def sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i), chi the quadratic character of GF(q), q prime."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    index = (torch.arange(q).unsqueeze(0) - torch.arange(q).unsqueeze(1)) % q
    return chi[index]


def paley(order: int) -> torch.Tensor | None:
    """A Hadamard matrix of `order` from Paley's construction I or II, or None if neither applies."""
    q = order - 1
    if is_prime(q) and q % 4 == 3:  # Paley I: H = I + S, S skew with a bordered Jacobsthal core
        s = torch.zeros(order, order, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal(q)
        return torch.eye(order, dtype=torch.float64) + s
    q = order // 2 - 1
    if order % 2 == 0 and is_prime(q) and q % 4 == 1:  # Paley II from the symmetric conference matrix
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, jacobsthal(q)
        plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        minus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, plus) + torch.kron(torch.eye(q + 1, dtype=torch.float64), minus)
    return None


@lru_cache(maxsize=32)
def hadamard_factors(n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, B) with A a Paley/small Hadamard matrix and B a Sylvester one, A (x) B of order n; None if none."""
    power = 1
    while n % (power * 2) == 0:
        power *= 2
    for factor_power in (power, power // 2, power // 4):
        if factor_power < 1:
            continue
        factor = n // factor_power
        base = sylvester(factor) if factor in (1, 2) else paley(factor)
        if base is not None:
            return base, sylvester(factor_power)
    return None


def hadamard(n: int) -> torch.Tensor:
    """A Hadamard matrix of order n (float64, entries +-1), or PqqpError naming n if none is constructible."""
    factors = hadamard_factors(n)
    if factors is None:
        raise PqqpError(f"no Hadamard matrix of order {n} is constructible here (n = 2^k * m needs m = 1, 2, q+1 or 2(q+1), q prime)")
    return torch.kron(*factors)


def orthonormal_hadamard(n: int) -> torch.Tensor:
    """H / sqrt(n): an orthogonal matrix whose entries all have magnitude 1/sqrt(n)."""
    return hadamard(n) / n**0.5


def random_rotation(n: int, seed: int) -> tuple[torch.Tensor, str]:
    """QuaRot's randomised Hadamard rotation H diag(s) / sqrt(n) (random signs s), float64 and orthogonal.

    Where no Hadamard matrix of order n is constructible, a Haar-random orthogonal matrix (QR of a Gaussian)
    stands in; the second value says which was used.
    """
    generator = torch.Generator().manual_seed(seed)
    if hadamard_factors(n) is None:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diag(r)).unsqueeze(0), f"random orthogonal {n} (no Hadamard of this order)"
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    a, b = hadamard_factors(n)
    return orthonormal_hadamard(n) * signs.unsqueeze(0), f"random Hadamard {n} ({a.shape[0]}x{b.shape[0]})"
