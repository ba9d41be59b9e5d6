"""Search-space encoding: typed parameters, constraints, mutation/crossover, stable hashes."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhop.backends.base import Candidate
from uhop.space import Categorical, Constraint, Int, Pow2, SearchSpace, fits_shared_memory, space_of


def tiled_space(limit: int = 48 * 1024) -> SearchSpace:
    # A GPU-style tiled matmul: float32 tiles of A (BM x BK) and B (BK x BN) must fit shared memory.
    return SearchSpace(
        [Pow2("BM", 16, 256), Pow2("BN", 16, 256), Pow2("BK", 8, 64), Int("stages", 1, 4), Categorical("order", ("mk", "km"))],
        [fits_shared_memory(lambda c: 4 * c["stages"] * (c["BM"] * c["BK"] + c["BK"] * c["BN"]), limit_bytes=limit)],
        backend="triton",
        template="matmul",
    )


def test_params_domains_and_encoding():
    p = Pow2("b", 4, 64)
    assert p.values() == (4, 8, 16, 32, 64)
    assert p.encode(16) == 4.0 and p.decode(4.2) == 16 and p.decode(100) == 64 and p.decode(-3) == 4
    assert sorted(p.neighbours(16)) == [8, 32] and p.neighbours(4) == [8]
    i = Int("u", 1, 9, 2)
    assert i.values() == (1, 3, 5, 7, 9) and i.decode(4.1) == 5 and i.contains(7) and not i.contains(8)
    c = Categorical("o", ("a", "b", "c"))
    assert c.neighbours("b") == ["a", "c"] and c.decode(c.encode("c")) == "c"
    with pytest.raises(ValueError, match="powers of two"):
        Pow2("x", 3, 64)
    with pytest.raises(ValueError, match="low <= high"):
        Int("x", 5, 1)


def test_constraints_respected_everywhere():
    space = tiled_space()
    rng = random.Random(0)
    every = list(space.configs())
    assert 0 < len(every) == len(space) < space.upper_size()
    assert all(space.is_valid(c) for c in every)
    for _ in range(200):
        a, b = space.sample(rng), space.sample(rng)
        assert space.is_valid(a)
        m = space.mutate(a, rng)
        assert space.is_valid(m) and m != a
        assert space.is_valid(space.crossover(a, b, rng))
        assert all(space.is_valid(n) for n in space.neighbours(a))
    bad = {"BM": 256, "BN": 256, "BK": 64, "stages": 4, "order": "mk"}
    assert not space.is_valid(bad)
    with pytest.raises(ValueError, match="shared memory"):
        space.check(bad)
    with pytest.raises(ValueError, match="outside"):
        space.check({**every[0], "BM": 24})


def test_encode_decode_roundtrip():
    space = tiled_space()
    for cfg in list(space.configs())[::37]:
        assert space.decode(space.encode(cfg)) == cfg


def test_config_hash_stable_across_processes():
    space = tiled_space()
    cfg = next(iter(space.configs()))
    here = space.config_hash(cfg)
    code = (
        "from tests.unit.test_space import tiled_space; s = tiled_space(); "
        "print(s.config_hash(next(iter(s.configs()))))"
    )
    root = Path(__file__).resolve().parents[2]
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout.strip()
    assert here == other and len(here) == 16
    # order of keys does not matter; a different value does
    assert space.config_hash(dict(reversed(list(cfg.items())))) == here
    assert space.config_hash({**cfg, "order": "km"}) != here


def test_candidates_and_union():
    a = tiled_space()
    b = SearchSpace.from_candidates([Candidate.of("numpy", "blocked", block=b) for b in (16, 64)] + [Candidate.of("numpy", "eager")])
    assert b.candidates() == [Candidate.of("numpy", "blocked", block=16), Candidate.of("numpy", "blocked", block=64),
                              Candidate.of("numpy", "eager")]  # fmt: skip
    u = SearchSpace.union([a, b], ["triton", "numpy"])
    assert len(u) == len(a) + len(b)
    cands = u.candidates()
    assert len(set(cands)) == len(cands)
    assert {c.backend for c in cands} == {"triton", "numpy"}
    rng = random.Random(1)
    for _ in range(100):
        cfg = u.sample(rng)
        assert u.is_valid(cfg) and u.is_valid(u.mutate(cfg, rng))
        # inactive parameters are pinned, so one kernel has one hash
        assert u.canonical(cfg) == cfg


def test_space_of_wraps_explicit_candidates():
    from uhop import backends as bk
    from uhop.problem import Problem

    np_backend = bk.get("numpy")
    from uhop.ops import get as get_op

    spec_dims = get_op("softmax").dims
    prob = Problem.make("softmax", dict.fromkeys(spec_dims, 8), "float32")
    space = space_of(np_backend, prob)
    assert space.candidates() == list(np_backend.candidates(prob))


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(0, 5), span=st.integers(0, 6), seed=st.integers(0, 2**32 - 1))
def test_pow2_mutation_stays_in_domain(lo, span, seed):
    p = Pow2("x", 1 << lo, 1 << (lo + span))
    rng = random.Random(seed)
    v = p.sample(rng)
    for _ in range(20):
        v = p.mutate(v, rng)
        assert p.contains(v)


def test_bad_space_arguments():
    with pytest.raises(ValueError, match="duplicate"):
        SearchSpace([Int("a", 0, 1), Int("a", 0, 2)])
    with pytest.raises(ValueError, match="no valid config"):
        SearchSpace([Int("a", 0, 3)], [Constraint(lambda c: False, "never")]).sample(random.Random(0))


def test_nested_union_counts_each_kernel_once():
    inner = SearchSpace.union([tiled_space(), SearchSpace([Pow2("tile", 1, 8)], backend="triton", template="flat")],
                              ["tiled", "flat"])  # fmt: skip
    other = SearchSpace.from_candidates([Candidate.of("numpy", "blas")])
    outer = SearchSpace.union([inner, other], ["triton", "numpy"])
    assert len(outer) == len(inner) + 1 == len(tiled_space()) + 4 + 1
    cands = outer.candidates()
    assert len(set(cands)) == len(cands)
    rng = random.Random(2)
    for _ in range(50):
        cfg = outer.mutate(outer.sample(rng), rng)
        assert outer.is_valid(cfg) and outer.canonical(cfg) == cfg
