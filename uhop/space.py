"""Typed search spaces: the configs a backend can build for one problem.

A :class:`SearchSpace` is a list of parameter fragments plus constraints. Each fragment owns its
domain, sampling, neighbours, mutation and encoding (a power of two mutates by x2 / /2 and encodes
as its log2; a categorical encodes as its index), so strategies only ever see flat float vectors
and whole configs (``dict[str, value]``). Constraints (e.g. "the tiles of this config fit the
device's shared memory", read from the hardware manifest) live with the space: every config a
space hands out is valid.

Spaces compose: :meth:`SearchSpace.union` joins the spaces of several backends/templates under a
``variant`` categorical, with each sub-space's parameters active only for its own variant
(inactive parameters are pinned to their default, so equal kernels have equal hashes).
:meth:`SearchSpace.from_candidates` wraps a backend's explicit candidate list.

``config_hash`` is stable across processes and runs: SHA-256 of the canonical JSON of backend,
template and config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from uhop.backends.base import Candidate

Config = dict[str, Any]

#: spaces larger than this are never enumerated (sampling only)
MAX_ENUMERATE = 2_000_000


class Param(ABC):
    """One tunable parameter: a finite, ordered domain."""

    name: str

    @abstractmethod
    def values(self) -> tuple[Any, ...]:
        """The whole domain, in order (neighbours are adjacent values)."""

    @property
    def default(self) -> Any:
        return self.values()[0]

    def contains(self, v: Any) -> bool:
        return v in self.values()

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values())

    def index(self, v: Any) -> int:
        return self.values().index(v)

    def neighbours(self, v: Any) -> list[Any]:
        vals = self.values()
        i = self.index(v)
        return [vals[j] for j in (i - 1, i + 1) if 0 <= j < len(vals)]

    def mutate(self, v: Any, rng: random.Random) -> Any:
        """A step to a neighbour, or (1 in 4) a jump anywhere in the domain."""
        vals = self.values()
        if len(vals) < 2:
            return v
        if rng.random() < 0.25:
            return rng.choice([x for x in vals if x != v])
        return rng.choice(self.neighbours(v))

    def encode(self, v: Any) -> float:
        return float(self.index(v))

    def decode(self, x: float) -> Any:
        vals = self.values()
        return vals[min(len(vals) - 1, max(0, int(round(x))))]

    def bounds(self) -> tuple[float, float]:
        """Range of :meth:`encode` values."""
        return 0.0, float(len(self.values()) - 1)


@dataclass(frozen=True)
class Int(Param):
    """Integers ``low, low+step, ..., <= high``; encodes as the value itself."""

    name: str
    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.step < 1 or self.high < self.low:
            raise ValueError(f"Int {self.name!r}: need low <= high and step >= 1, got {self.low}, {self.high}, {self.step}")

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1, self.step))

    def contains(self, v: Any) -> bool:
        return isinstance(v, int) and self.low <= v <= self.high and (v - self.low) % self.step == 0

    def index(self, v: Any) -> int:
        return (int(v) - self.low) // self.step

    def encode(self, v: Any) -> float:
        return float(v)

    def decode(self, x: float) -> int:
        k = int(round((x - self.low) / self.step))
        return self.low + self.step * min(max(k, 0), (self.high - self.low) // self.step)

    def bounds(self) -> tuple[float, float]:
        return float(self.low), float(self.values()[-1])


@dataclass(frozen=True)
class Pow2(Param):
    """Powers of two in ``[low, high]``; mutates by x2 or /2 and encodes as log2."""

    name: str
    low: int
    high: int

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            if v < 1 or v & (v - 1):
                raise ValueError(f"Pow2 {self.name!r}: bounds must be powers of two >= 1, got {self.low}, {self.high}")
        if self.high < self.low:
            raise ValueError(f"Pow2 {self.name!r}: low {self.low} > high {self.high}")

    def values(self) -> tuple[int, ...]:
        return tuple(1 << e for e in range(self.low.bit_length() - 1, self.high.bit_length()))

    def contains(self, v: Any) -> bool:
        return isinstance(v, int) and self.low <= v <= self.high and v & (v - 1) == 0

    def index(self, v: Any) -> int:
        return int(v).bit_length() - self.low.bit_length()

    def encode(self, v: Any) -> float:
        return float(int(v).bit_length() - 1)

    def decode(self, x: float) -> int:
        lo, hi = self.bounds()
        return 1 << int(min(max(round(x), lo), hi))

    def bounds(self) -> tuple[float, float]:
        return float(self.low.bit_length() - 1), float(self.high.bit_length() - 1)


@dataclass(frozen=True)
class Categorical(Param):
    """Unordered choices (neighbours are all other choices); encodes as the index."""

    name: str
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"Categorical {self.name!r}: needs at least one choice")
        object.__setattr__(self, "choices", tuple(self.choices))

    def values(self) -> tuple[Any, ...]:
        return self.choices

    def neighbours(self, v: Any) -> list[Any]:
        return [c for c in self.choices if c != v]


@dataclass(frozen=True)
class Constraint:
    """A predicate every config must satisfy, with a one-line description for error messages."""

    fn: Callable[[Config], bool]
    description: str

    def __call__(self, cfg: Config) -> bool:
        try:
            return bool(self.fn(cfg))
        except (KeyError, TypeError, ValueError):
            return False


def manifest_limit(field_names: Sequence[str], default: float | None = None, device: str = "cpu") -> float | None:
    """A number from the hardware manifest (first of ``field_names`` present), else ``default``.

    Imported lazily: the manifest module is optional here and a missing one means ``default``."""
    try:
        from uhop.hardware import get_capabilities  # type: ignore[attr-defined]

        try:
            caps = get_capabilities(device)  # type: ignore[call-arg]
        except TypeError:
            caps = get_capabilities()
    except Exception:
        return default
    for name in field_names:
        v = caps.get(name) if isinstance(caps, Mapping) else getattr(caps, name, None)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return default


def fits_shared_memory(bytes_of: Callable[[Config], float], limit_bytes: float | None = None, device: str = "cuda") -> Constraint:
    """Constraint: ``bytes_of(cfg)`` (e.g. tile footprint) is at most the shared memory per block of
    ``device`` (``limit_bytes`` if given, else the manifest's; unconstrained if neither is known)."""
    limit = limit_bytes
    if limit is None:
        limit = manifest_limit(("shared_memory_per_block", "shared_mem_per_block", "smem_per_block_bytes"), None, device)
    if limit is None:
        return Constraint(lambda cfg: True, "shared memory (no limit known)")
    return Constraint(lambda cfg, _l=limit: bytes_of(cfg) <= _l, f"shared memory <= {int(limit)} bytes")


class SearchSpace:
    """Parameters + constraints (+ optional conditions) -> valid configs -> :class:`Candidate` s.

    ``conditions[name] = (other, value)`` makes ``name`` active only when ``cfg[other] == value``.
    ``to_candidate`` maps a config to a candidate (default: ``Candidate.of(backend, template, **cfg)``,
    with a ``template`` parameter, if any, naming the template)."""

    def __init__(
        self,
        params: Sequence[Param],
        constraints: Sequence[Constraint] = (),
        *,
        backend: str = "",
        template: str = "",
        conditions: Mapping[str, tuple[str, Any]] | None = None,
        to_candidate: Callable[[Config], Candidate] | None = None,
    ) -> None:
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"params: duplicate parameter names in {names}")
        if not params:
            raise ValueError("params: a search space needs at least one parameter")
        self.params: tuple[Param, ...] = tuple(params)
        self.constraints: tuple[Constraint, ...] = tuple(constraints)
        self.backend, self.template = backend, template
        self.conditions = dict(conditions or {})
        for n, (other, _) in self.conditions.items():
            if n not in names or other not in names:
                raise ValueError(f"conditions: {n!r} -> {other!r} names an unknown parameter")
        self._to_candidate = to_candidate
        self._by_name = {p.name: p for p in self.params}
        self._size: int | None = None
        self._hashes: dict[tuple, str] = {}

    # ---- identity -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        return self._by_name[name]

    def upper_size(self) -> int:
        """Size of the unconstrained product (an upper bound on :meth:`size`)."""
        return math.prod(len(p.values()) for p in self.params)

    def size(self) -> int | None:
        """Number of distinct valid configs (``None`` if too large to enumerate)."""
        if self._size is None and self.upper_size() <= MAX_ENUMERATE:
            self._size = sum(1 for _ in self.configs())
        return self._size

    def __len__(self) -> int:
        n = self.size()
        if n is None:
            raise OverflowError(f"search space of {self.upper_size()} configs is too large to count")
        return n

    def __repr__(self) -> str:
        return f"SearchSpace({', '.join(self.names)}; {len(self.constraints)} constraints)"

    # ---- validity -------------------------------------------------------------------------
    def active(self, cfg: Mapping[str, Any], name: str) -> bool:
        """Whether ``name`` matters for ``cfg`` (its condition holds, and its condition's, ...)."""
        cond = self.conditions.get(name)
        while cond is not None:
            other, value = cond
            if cfg.get(other) != value:
                return False
            cond = self.conditions.get(other)
        return True

    def canonical(self, cfg: Mapping[str, Any]) -> Config:
        """``cfg`` in parameter order, inactive parameters pinned to their default."""
        return {p.name: (cfg[p.name] if self.active(cfg, p.name) else p.default) for p in self.params}

    def is_valid(self, cfg: Mapping[str, Any]) -> bool:
        if set(cfg) != set(self._by_name):
            return False
        if any(not p.contains(cfg[p.name]) for p in self.params):
            return False
        return all(c(dict(cfg)) for c in self.constraints)

    def why_invalid(self, cfg: Mapping[str, Any]) -> str:
        missing, extra = set(self._by_name) - set(cfg), set(cfg) - set(self._by_name)
        if missing or extra:
            return f"config keys: missing {sorted(missing)}, unknown {sorted(extra)}"
        for p in self.params:
            if not p.contains(cfg[p.name]):
                return f"{p.name}={cfg[p.name]!r} is outside {p.values()[:8]}"
        for c in self.constraints:
            if not c(dict(cfg)):
                return f"violates {c.description}"
        return ""

    def check(self, cfg: Mapping[str, Any]) -> Config:
        """``cfg`` canonicalized, or ValueError saying what is wrong with it."""
        why = self.why_invalid(cfg)
        if why:
            raise ValueError(f"config {dict(cfg)} is not in this space: {why}")
        return self.canonical(cfg)

    # ---- enumeration and sampling -----------------------------------------------------------
    def configs(self) -> Iterator[Config]:
        """Every valid config once, in a deterministic order (product of domains, in param order)."""
        if self.upper_size() > MAX_ENUMERATE:
            raise OverflowError(f"search space of {self.upper_size()} configs is too large to enumerate")
        seen: set[tuple] = set()
        for combo in itertools.product(*(p.values() for p in self.params)):
            cfg = self.canonical(dict(zip(self.names, combo, strict=True)))
            key = tuple(cfg.values())
            if key in seen:
                continue
            seen.add(key)
            if all(c(cfg) for c in self.constraints):
                yield cfg

    def sample(self, rng: random.Random, tries: int = 1000) -> Config:
        """A uniformly drawn valid config (rejection sampling; enumeration when constraints reject
        almost everything)."""
        for _ in range(tries):
            cfg = self.canonical({p.name: p.sample(rng) for p in self.params})
            if all(c(cfg) for c in self.constraints):
                return cfg
        pool = list(self.configs())
        if not pool:
            raise ValueError(f"{self!r} has no valid config")
        return rng.choice(pool)

    def neighbours(self, cfg: Mapping[str, Any]) -> list[Config]:
        """Valid configs that differ from ``cfg`` in one active parameter by one step."""
        out = []
        for p in self.params:
            if not self.active(cfg, p.name):
                continue
            for v in p.neighbours(cfg[p.name]):
                n = self.canonical({**cfg, p.name: v})
                if all(c(n) for c in self.constraints):
                    out.append(n)
        return out

    def mutate(self, cfg: Mapping[str, Any], rng: random.Random, rate: float | None = None, tries: int = 100) -> Config:
        """Mutate each active parameter with probability ``rate`` (default 1/#params, at least one
        changes); returns a valid config different from ``cfg`` when one can be found."""
        active = [p for p in self.params if self.active(cfg, p.name) and len(p.values()) > 1]
        if not active:
            return self.canonical(cfg)
        rate = 1.0 / len(active) if rate is None else rate
        base = self.canonical(cfg)
        for _ in range(tries):
            new = dict(base)
            chosen = [p for p in active if rng.random() < rate] or [rng.choice(active)]
            for p in chosen:
                new[p.name] = p.mutate(new[p.name], rng)
            new = self.canonical(new)
            if new != base and all(c(new) for c in self.constraints):
                return new
        return base

    def crossover(self, a: Mapping[str, Any], b: Mapping[str, Any], rng: random.Random, tries: int = 100) -> Config:
        """Uniform crossover: each parameter from ``a`` or ``b``; valid, else ``a``."""
        for _ in range(tries):
            child = self.canonical({p.name: (a if rng.random() < 0.5 else b)[p.name] for p in self.params})
            if all(c(child) for c in self.constraints):
                return child
        return self.canonical(a)

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, cfg: Mapping[str, Any]) -> list[float]:
        return [p.encode(cfg[p.name]) for p in self.params]

    def decode(self, vec: Sequence[float]) -> Config:
        """Nearest config to ``vec`` (may violate constraints: check with :meth:`is_valid`)."""
        if len(vec) != len(self.params):
            raise ValueError(f"vec has {len(vec)} entries, this space has {len(self.params)} parameters")
        return self.canonical({p.name: p.decode(x) for p, x in zip(self.params, vec, strict=True)})

    def bounds(self) -> list[tuple[float, float]]:
        return [p.bounds() for p in self.params]

    # ---- candidates ---------------------------------------------------------------------------
    def candidate(self, cfg: Mapping[str, Any]) -> Candidate:
        cfg = self.canonical(cfg)
        if self._to_candidate is not None:
            return self._to_candidate(cfg)
        template = cfg.pop("template", self.template)
        return Candidate.of(self.backend, template, **cfg)

    def candidates(self, limit: int | None = None) -> list[Candidate]:
        return [self.candidate(c) for c in itertools.islice(self.configs(), limit)]

    def config_hash(self, cfg: Mapping[str, Any]) -> str:
        """Stable id of the kernel a config builds (same across processes, runs and machines)."""
        canon = self.canonical(cfg)
        try:
            key = tuple(canon.values())
            hit = self._hashes.get(key)
        except TypeError:  # unhashable config values: no memo
            return candidate_hash(self.candidate(canon))
        if hit is None:
            hit = self._hashes[key] = candidate_hash(self.candidate(canon))
        return hit

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_candidates(cls, candidates: Sequence[Candidate]) -> SearchSpace:
        """A one-parameter space over an explicit candidate list (kept in the given order)."""
        uniq = list(dict.fromkeys(candidates))
        if not uniq:
            raise ValueError("candidates: need at least one candidate")
        by_id = {c.id: c for c in uniq}
        return cls([Categorical("candidate", tuple(by_id))], to_candidate=lambda cfg: by_id[cfg["candidate"]])

    @classmethod
    def union(cls, spaces: Sequence[SearchSpace], labels: Sequence[str] | None = None) -> SearchSpace:
        """One space over several: a ``variant`` categorical picks the sub-space, whose parameters
        appear as ``LABEL.NAME`` and are active only for that variant."""
        if not spaces:
            raise ValueError("spaces: need at least one search space")
        if len(spaces) == 1:
            return spaces[0]
        if labels is None:
            labels = []
            for i, s in enumerate(spaces):
                base = f"{s.backend}/{s.template}".strip("/") or f"s{i}"
                labels.append(base if base not in labels else f"{base}#{i}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {list(labels)}")
        variant = Categorical("variant", tuple(labels))
        params: list[Param] = [variant]
        conditions: dict[str, tuple[str, Any]] = {}
        constraints: list[Constraint] = []
        subs = dict(zip(labels, spaces, strict=True))
        for label, s in subs.items():
            for p in s.params:
                q = _renamed(p, f"{label}.{p.name}")
                params.append(q)
                inner = s.conditions.get(p.name)  # a nested union keeps its own conditions
                conditions[q.name] = (f"{label}.{inner[0]}", inner[1]) if inner else ("variant", label)
            for c in s.constraints:
                constraints.append(
                    Constraint(lambda cfg, _c=c, _l=label, _s=s: cfg["variant"] != _l or _c(_sub(cfg, _l, _s)),
                               f"{label}: {c.description}")
                )  # fmt: skip

        def to_candidate(cfg: Config) -> Candidate:
            label = cfg["variant"]
            return subs[label].candidate(_sub(cfg, label, subs[label]))

        return cls(params, constraints, conditions=conditions, to_candidate=to_candidate)


def _sub(cfg: Mapping[str, Any], label: str, space: SearchSpace) -> Config:
    return {p.name: cfg[f"{label}.{p.name}"] for p in space.params}


def _renamed(p: Param, name: str) -> Param:
    import dataclasses

    return dataclasses.replace(p, name=name)  # type: ignore[type-var]


def candidate_hash(candidate: Candidate) -> str:
    """SHA-256 (hex, 16 chars) of a candidate's canonical JSON."""
    doc = json.dumps(candidate.to_json(), sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def space_of(backend: Any, problem: Any) -> SearchSpace:
    """The search space of ``backend`` for ``problem``: ``backend.space(problem)`` when the backend
    defines one, else its explicit candidate list wrapped by :meth:`SearchSpace.from_candidates`."""
    fn = getattr(backend, "space", None)
    if callable(fn):
        space = fn(problem)
        if space is not None:
            return space
    return SearchSpace.from_candidates(list(backend.candidates(problem)))


def space_for_problem(problem: Any, backends: Sequence[Any]) -> SearchSpace:
    """Union of the spaces of ``backends`` (each labelled by backend name) for ``problem``."""
    spaces, labels = [], []
    for b in backends:
        try:
            spaces.append(space_of(b, problem))
            labels.append(b.name)
        except Exception:  # a backend failing to enumerate must not stop the others
            continue
    if not spaces:
        raise ValueError(f"no backend produced a search space for {getattr(problem, 'describe', lambda: problem)()}")
    return SearchSpace.union(spaces, labels)
