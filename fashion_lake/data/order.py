"""Which rows each process reads, in which order: pure arithmetic, no I/O.

Rows are stored in *read units*: runs of consecutive rows that storage fetches whole (Deep
Lake's chunks, ``units.py``). Each training epoch:

1. the units are permuted (seeded by ``(seed, epoch)``) and laid end to end;
2. that sequence is cut into ``partitions`` equal parts (canonical partitions, as MosaicML
   streaming's canonical nodes): a unit is split only where a cut falls inside it, and
   neighbouring partitions read such a unit at the same time (odd partitions read their
   pieces backwards), so the process owning both fetches it once. Among few units cuts move
   to unit ends, coarsest first (``TrainOrder.bounds``), so that ranks read whole units;
3. each partition shuffles its rows within groups of consecutive pieces: 1, 2, 4, ... pieces
   up to ``group_units`` (the first batch waits for one unit per partition, not a group);
4. global position ``i`` of the epoch is row ``i // P`` of partition ``cycle[i % P]`` (``P``
   partitions), and global batch ``g`` is positions ``[g * G, (g + 1) * G)``. ``cycle`` visits
   the partitions in digit-reversed order (0, 4, 2, 6, 1, 5, 3, 7 for 8), so that any run of
   consecutive positions spreads evenly over aligned blocks of partitions: every rank's share
   of a batch is ``G / W`` rows when ``W`` divides ``G`` (``P`` a power of two, or ``W`` a
   product of its smallest prime factors), else within a row per partition of it. Partitions
   that moved cuts made unequal give each batch rows in proportion to their lengths instead.

So the rows of every global batch depend on ``(seed, epoch, units, partitions, group_units,
G)`` only, never on the number of ranks or workers. Rank ``r`` of ``W`` owns partitions
``[r * P / W, (r + 1) * P / W)`` (``W`` must divide ``P``), and its ``K`` workers read whole
units, each dealt to the least loaded worker when the rank first reads it (``Readers``): every
unit is read by one process per epoch, except the at most ``P - 1`` units cut between
partitions of two processes. On local storage each worker reads its run of every unit's rows
instead, so that the workers stay even among few units. A batch is assembled from its workers'
parts in global-position order, so resuming with other workers is exact.

Nothing here is O(rows): the epoch plan is O(units), and a partition's rows are computed a
group at a time (O(group rows)).

Evaluation gives each rank a contiguous share of the rows, and each worker a contiguous share
of its rank's, read in storage order. Every row is read exactly once across ranks, and every
rank runs the same number of steps (a rank may get empty batches at the end), so per-step
collectives never wait on a rank that has run out of data.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Sampler

ORDER_VERSION = 2  # raised when the same settings give other batches: older mid-epoch checkpoints are refused
SNAP = 0.2  # a partition boundary this close (of the ranks' shares it bounds) to a unit's end moves there,
SNAP_UNITS = 16  # where the epoch has fewer units than this per partition
UNEVEN_BATCH = 4  # and only for global batches of at least this many rows per partition,
SHORTEST = 0.5  # leaving no partition under this share of an even one: each gives a batch a row or more


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: injected in tests, read from the Trainer otherwise."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {self.rank} of {self.world_size}")


def per_device_batch(batch_size: int | None, global_batch_size: int | None, world_size: int) -> int:
    """Resolve the per-device batch from whichever of the two the user configured."""
    if global_batch_size is None:
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size
    if global_batch_size < world_size or global_batch_size % world_size:
        raise ValueError(
            f"global_batch_size={global_batch_size} does not divide evenly over {world_size} "
            f"processes; pick a multiple of {world_size} or set batch_size (per device) instead."
        )
    return global_batch_size // world_size


@dataclass(frozen=True)
class Pieces:
    """A partition's rows as pieces of units, in reading order: piece ``k`` is rows
    ``[starts[k], stops[k])``, of unit ``units[k]``."""

    units: np.ndarray
    starts: np.ndarray
    stops: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.stops - self.starts


class Partition:
    """One partition's rows in an epoch: pieces shuffled within groups, computed a group at a time."""

    def __init__(self, pieces: Pieces, seed: int, epoch: int, index: int, group_units: int) -> None:
        self.pieces, self.seed, self.epoch, self.index = pieces, seed, epoch, index
        self.group_units = group_units
        lengths = pieces.lengths
        # groups of 1, 2, 4, ... pieces up to ``group_units``: the first batch waits for one unit
        # per partition, not a whole group of them
        sizes, size = [], 1
        while sum(sizes) < len(lengths):
            sizes.append(min(size, group_units))
            size *= 2
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # in pieces
        group_of_piece = np.repeat(np.arange(len(sizes)), sizes)[: len(lengths)]
        self.group_ends = np.cumsum(np.bincount(group_of_piece, lengths, minlength=0).astype(np.int64))
        self._group: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.group_ends[-1]) if len(self.group_ends) else 0

    def group(self, k: int) -> np.ndarray:
        """The storage rows of group ``k``, in their shuffled order."""
        if self._group is None or self._group[0] != k:
            sl = slice(int(self.group_starts[k]), int(self.group_starts[k + 1]))
            rows = np.concatenate(
                [np.arange(a, b) for a, b in zip(self.pieces.starts[sl], self.pieces.stops[sl], strict=True)]
            )
            rng = np.random.default_rng([self.seed, self.epoch, self.index, k])
            self._group = (k, rng.permutation(rows))
        return self._group[1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Storage rows at positions ``[start, stop)`` of this partition."""
        out = []
        while start < stop:
            k = int(np.searchsorted(self.group_ends, start, side="right"))
            first = int(self.group_ends[k - 1]) if k else 0
            end = min(stop, int(self.group_ends[k]))
            out.append(self.group(k)[start - first : end - first])
            start = end
        return np.concatenate(out) if out else np.empty(0, np.int64)

    def group_at(self, position: int) -> int:
        """The group holding ``position``."""
        return int(np.searchsorted(self.group_ends, position, side="right"))

    def groups_from(self, k: int) -> list[np.ndarray]:
        """Unit ids of group ``k`` and of the next group (to read ahead)."""
        starts, units = self.group_starts, self.pieces.units
        return [units[starts[j] : starts[j + 1]] if j + 1 < len(starts) else units[:0] for j in (k, k + 1)]


@dataclass(frozen=True)
class Readers:
    """Which of a rank's ``workers`` reads each of its rows in an epoch.

    Whole units dealt to the workers as the rank comes to them (``TrainOrder.readers``), each
    fetched by one process; or, with ``split`` (local storage, where the page cache serves a
    repeated read), the rows the rank reads of each unit cut into ``workers`` runs, one per
    worker: the workers stay even however few the units are. Either way a step's part of each
    worker holds about ``1 / workers`` of its rows (dealt whole, as evenly as the units allow).
    """

    dealt: np.ndarray  # unit -> the worker that reads it whole; -1: the rank reads none of it
    lo: np.ndarray  # unit -> the first row of it that the rank reads
    hi: np.ndarray  # unit -> the end of the rows of it that the rank reads
    workers: int
    split: bool

    def worker_of(self, rows: np.ndarray, units: np.ndarray) -> np.ndarray:
        """The worker reading each of ``rows`` (of ``units``)."""
        if not self.split:
            return self.dealt[units]
        lo, hi = self.lo[units], self.hi[units]
        return (rows - lo) * self.workers // np.maximum(hi - lo, 1)

    def span(self, unit: int, worker: int) -> tuple[int, int]:
        """Rows ``[a, b)`` of ``unit`` that ``worker`` reads."""
        lo, hi = int(self.lo[unit]), int(self.hi[unit])
        if not self.split:
            return (lo, hi) if self.dealt[unit] == worker else (lo, lo)
        a, b = self._run(hi - lo, worker)
        return lo + a, lo + b

    def reads(self, units: np.ndarray, worker: int) -> np.ndarray:
        """Whether ``worker`` reads any row of each of ``units``."""
        if not self.split:
            return self.dealt[units] == worker
        a, b = self._run(self.hi[units] - self.lo[units], worker)
        return (self.dealt[units] >= 0) & (a < b)

    def _run(self, rows: Any, worker: int) -> tuple[Any, Any]:
        """Offsets ``[a, b)`` of ``worker``'s run of ``rows`` rows (a number or an array of them)."""
        return -(-worker * rows // self.workers), -(-(worker + 1) * rows // self.workers)


@dataclass(frozen=True)
class OrderSpec:
    """What a training order depends on besides the epoch; it travels to the loader's workers."""

    unit_starts: np.ndarray = field(compare=False, repr=False)
    global_batch: int
    seed: int = 0
    partitions: int = 8
    group_units: int = 4
    drop_last: bool = True
    world_size: int = 1

    def at(self, epoch: int) -> TrainOrder:
        return TrainOrder(self.unit_starts, self.global_batch, seed=self.seed, epoch=epoch,
                          partitions=self.partitions, group_units=self.group_units, drop_last=self.drop_last,
                          world_size=self.world_size)  # fmt: skip


class TrainOrder:
    """One training epoch's global batches over read units (see the module docstring)."""

    def __init__(
        self,
        unit_starts: np.ndarray,
        global_batch: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        partitions: int = 8,
        group_units: int = 4,
        drop_last: bool = True,
        world_size: int = 1,
    ) -> None:
        if global_batch < 1 or partitions < 1 or group_units < 1:
            raise ValueError(f"need global_batch, partitions, group_units >= 1, got {global_batch}, "
                             f"{partitions}, {group_units}")  # fmt: skip
        self.unit_starts = np.asarray(unit_starts, dtype=np.int64)
        self.rows = int(self.unit_starts[-1])
        self.global_batch, self.seed, self.epoch = global_batch, seed, epoch
        self.partitions, self.group_units, self.drop_last = partitions, group_units, drop_last
        self.world_size = world_size  # only whether a short last batch is kept depends on it

    @cached_property
    def partition_list(self) -> list[Partition]:
        """The epoch's partitions: permuted units laid end to end, cut into equal parts."""
        parts = self.partitions
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.unit_starts) - 1)
        lengths = np.diff(self.unit_starts)[perm]
        ends = np.cumsum(lengths)
        begins = ends - lengths
        bounds = self.bounds(ends)
        out = []
        for p in range(parts):
            lo, hi = int(bounds[p]), int(bounds[p + 1])
            first = int(np.searchsorted(ends, lo, side="right"))
            last = int(np.searchsorted(begins, hi, side="left"))
            units = perm[first:last]
            starts = self.unit_starts[units] + np.maximum(lo - begins[first:last], 0)
            stops = self.unit_starts[units] + np.minimum(hi, ends[first:last]) - begins[first:last]
            pieces = Pieces(units, starts, stops)
            if p % 2:  # backwards: a unit cut between p - 1 and p is read by both at the epoch's end
                pieces = Pieces(units[::-1], starts[::-1], stops[::-1])
            out.append(Partition(pieces, self.seed, self.epoch, p, self.group_units))
        return out

    def bounds(self, ends: np.ndarray) -> np.ndarray:
        """Where the partitions start and end in the epoch's unit sequence (``ends``: where each
        unit ends): their shares of the position cycle, except among few units (under
        ``SNAP_UNITS`` a partition), where cuts move to unit ends, so that no process fetches a
        whole chunk for a few of its rows.

        Cuts are placed coarsest first: the one between the halves (it separates ranks at every
        even world size), then the quarters, and so on, each at its share of the segment that its
        placed neighbours bound. A cut moves to the nearest unit end within ``SNAP`` of the share
        of a rank at the fewest ranks it separates, unless that leaves a rank, at any world size,
        more than ``SNAP`` above an even share or a partition under ``SHORTEST`` of one: the
        largest share paces every step, while a smaller one only idles (the loader tells the
        model each rank's share, ``loader.rank_share``, so that the gradient stays the global
        batch's). Not for global batches (nor epochs) under ``UNEVEN_BATCH`` rows a partition,
        whose partitions of unequal length could not give every batch rows in proportion."""
        n, parts = self.rows, self.partitions
        shares = np.cumsum([(n - int(slot) + parts - 1) // parts for slot in self.slot_of])  # of the cycle
        even = np.array([0, *shares], dtype=np.int64)
        # a cut costs a unit read: worth partitions of unequal length only among few units
        if min(self.global_batch, n) < UNEVEN_BATCH * parts or len(ends) >= SNAP_UNITS * parts:
            return even
        cuts = {0: 0, parts: n}
        for c in sorted(range(1, parts), key=lambda c: (parts // math.gcd(c, parts), c)):
            ranks = parts // math.gcd(c, parts)  # the fewest ranks that this cut separates
            left, right = max(k for k in cuts if k < c), min(k for k in cuts if k > c)
            a, b = cuts[left], cuts[right]
            unmoved = (a, b) == (even[left], even[right])
            ideal = int(even[c]) if unmoved else a + (b - a) * (c - left) // (right - left)
            near = int(np.searchsorted(ends, ideal))
            moved = [int(ends[k]) for k in (near - 1, near) if 0 <= k < len(ends) and a < ends[k] < b]
            best = min(moved, key=lambda end: abs(end - ideal), default=ideal)
            share = (b - a) / (right - left) * (parts // ranks)  # a rank's, at ``ranks`` ranks
            sides = ((best - a) / (c - left) * parts / n, (b - best) / (right - c) * parts / n)  # of even
            fits = max(sides) <= 1 + SNAP and min(sides) >= SHORTEST
            cuts[c] = best if abs(best - ideal) <= SNAP * share and fits else ideal
        return np.array([cuts[k] for k in range(parts + 1)], dtype=np.int64)

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.array([len(partition) for partition in self.partition_list], dtype=np.int64)

    def taken(self, position: int) -> np.ndarray:
        """Rows of each partition in the epoch's first ``position`` global positions. Positions go
        to the partitions in a digit-reversed cycle, ``slot_of``, so that any run of them spreads
        evenly over the partitions. Where cuts moved to unit ends, the partitions, laid end to end,
        take the first ``position / rows`` of the epoch instead, each rounded down at its end: the
        rows of a batch add up to it exactly, and a rank's (or partition's) rows so far stay within
        a row of its share of the epoch, its rows of one batch within two."""
        length, parts, slot = self.lengths, self.partitions, self.slot_of
        if self._even:
            return np.minimum(length, np.maximum(0, -(-(position - slot) // parts)))
        position = min(position, self.rows)  # Python ints: rows * position may not fit in 64 bits
        return np.diff([end * position // self.rows for end in self._ends])

    @cached_property
    def _ends(self) -> list[int]:
        """Where each partition ends in the epoch, partitions laid end to end (0 first)."""
        return [0, *np.cumsum(self.lengths).tolist()]

    @cached_property
    def _even(self) -> bool:
        """Whether every partition holds exactly its share of the position cycle."""
        shares = (self.rows - self.slot_of + self.partitions - 1) // self.partitions
        return bool(np.all(self.lengths == shares))

    def readers(self, owned: range, workers: int, split: bool) -> Readers:
        """Which of ``workers`` reads each row of the ``owned`` partitions (see ``Readers``).

        Each unit goes, when the rank first reads it, to the worker with the fewest rows per
        step in flight: a partition gives every step the same number of rows, spread over the
        pieces of its current shuffle group by their lengths. Dealt by partition instead, a
        partition's consecutive groups would go to one worker each, and with two units a
        partition one worker would decode every row of the first half of the epoch."""
        count = len(self.unit_starts) - 1
        dealt = np.full(count, -1, dtype=np.int64)
        lo, hi = np.full(count, self.rows, dtype=np.int64), np.zeros(count, dtype=np.int64)
        groups = []  # (share of the epoch where it starts, where it ends, slot, partition, group)
        for p in owned:
            partition = self.partition_list[p]
            pieces, ends, length = partition.pieces, partition.group_ends, len(partition)
            np.minimum.at(lo, pieces.units, pieces.starts)
            np.maximum.at(hi, pieces.units, pieces.stops)
            for k in range(len(ends)):
                start = int(ends[k - 1]) if k else 0
                groups.append((start / length, int(ends[k]) / length, int(self.slot_of[p]), p, k))
        load, expiring = np.zeros(workers), []  # rows per step each worker reads; (end, worker, rate)
        for start, end, _, p, k in sorted(groups):
            while expiring and expiring[0][0] <= start:
                _, worker, rate = heapq.heappop(expiring)
                load[worker] -= rate
            pieces, at = self.partition_list[p].pieces, self.partition_list[p].group_starts
            units, lengths = pieces.units[at[k] : at[k + 1]], pieces.lengths[at[k] : at[k + 1]]
            rows = max(int(lengths.sum()), 1)
            for i in np.argsort(-lengths, kind="stable").tolist():  # the largest first
                unit, rate = int(units[i]), float(lengths[i] / rows)
                if dealt[unit] < 0:
                    dealt[unit] = int(np.argmin(load))
                load[dealt[unit]] += rate
                heapq.heappush(expiring, (end, int(dealt[unit]), rate))
        return Readers(dealt, lo, hi, workers, split)

    def owned(self, dist: DistContext) -> range:
        """The partitions rank ``dist.rank`` reads."""
        return self.owned_by(dist.rank, dist.world_size)

    def owned_by(self, rank: int, world_size: int) -> range:
        share = self.partitions // world_size
        return range(rank * share, (rank + 1) * share)

    @cached_property
    def steps(self) -> int:
        """Global batches in the epoch. The last, short one is dropped with ``drop_last``, and
        also when it would leave one of ``world_size`` ranks without a row."""
        full, tail = divmod(self.rows, self.global_batch)
        if self.drop_last or not tail:
            return full
        start = full * self.global_batch
        left = self.lengths - self.taken(start)
        ranks = [self.owned_by(r, self.world_size) for r in range(self.world_size)]
        return full + int(all(sum(left[p] for p in owned) > 0 for owned in ranks))

    @cached_property
    def slot_of(self) -> np.ndarray:
        """Partition -> its place in the cycle of positions (see the module docstring)."""
        return np.argsort(digit_reversed(self.partitions))

    def spans(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[a[p], b[p])`` of each partition ``p`` in global batch ``step``."""
        last = step == self.steps - 1 and not self.drop_last  # with any tail too small to share
        stop = self.lengths if last else self.taken((step + 1) * self.global_batch)
        return self.taken(step * self.global_batch), stop

    def batch_rows(self, step: int) -> int:
        """Rows in global batch ``step`` (its ``spans`` over every partition, added up)."""
        start, last = step * self.global_batch, step == self.steps - 1 and not self.drop_last
        return (self.rows if last else min(start + self.global_batch, self.rows)) - start

    def batch(self, step: int, partitions: range) -> tuple[np.ndarray, np.ndarray]:
        """(global positions, storage rows) of ``partitions``' share of batch ``step``, by position."""
        positions, rows, _ = self.batches(step, step + 1, partitions)
        return positions, rows

    def batches(self, first: int, stop: int, partitions: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global positions, storage rows, batch) of ``partitions``' shares of batches ``first ..
        stop - 1``, by batch, then by position within it. A partition's rows go to batches by its
        ``spans``: position order alone would mix batches where partitions differ in length."""
        edges = [self.taken(s * self.global_batch) for s in range(first, stop)] + [self.spans(stop - 1)[1]]
        bounds = np.stack(edges)  # (batches + 1, partitions)
        positions, rows, steps = [], [], []
        for p in partitions:
            a, b = int(bounds[0, p]), int(bounds[-1, p])
            at = np.arange(a, b, dtype=np.int64)
            positions.append(at * self.partitions + int(self.slot_of[p]))
            rows.append(self.partition_list[p].rows(a, b))
            steps.append(np.searchsorted(bounds[:, p], at, side="right") - 1)
        pos, got, step = np.concatenate(positions), np.concatenate(rows), np.concatenate(steps)
        order = np.lexsort((pos, step))
        return pos[order], got[order], step[order]

    def key(self) -> dict[str, int | bool]:
        """What the order depends on besides the epoch: a mid-epoch resume must find it unchanged."""
        return {
            "version": ORDER_VERSION,
            "rows": self.rows,
            "units": len(self.unit_starts) - 1,
            "global_batch": self.global_batch,
            "seed": self.seed,
            "partitions": self.partitions,
            "group_units": self.group_units,
            "drop_last": self.drop_last,
        }


def digit_reversed(count: int) -> np.ndarray:
    """0..count-1 in mixed-radix digit-reversed order (the radices: count's prime factors,
    smallest first): bit reversal for a power of two, e.g. 0, 4, 2, 6, 1, 5, 3, 7."""
    radices, rest, factor = [], count, 2
    while rest > 1:
        while rest % factor == 0:
            radices.append(factor)
            rest //= factor
        factor += 1
    out = np.zeros(1, dtype=np.int64)
    scale = count
    for radix in radices:  # the lowest digit of k becomes the highest digit of the partition
        scale //= radix
        out = np.concatenate([out + digit * scale for digit in range(radix)])
    return out


def eval_shares(rows: int, batch_size: int, dist: DistContext, workers: int) -> tuple[list[range], int]:
    """Evaluation: this rank's rows as one contiguous range per worker (one for ``workers`` 0),
    and the batches each worker yields (the same on every rank and worker; short ones pad)."""
    parts = max(1, workers)

    def share(lo: int, hi: int, k: int, n: int) -> range:
        size = hi - lo
        return range(lo + k * size // n, lo + (k + 1) * size // n)

    mine = share(0, rows, dist.rank, dist.world_size)
    largest = math.ceil(math.ceil(rows / dist.world_size) / parts)
    return [share(mine.start, mine.stop, k, parts) for k in range(parts)], math.ceil(largest / batch_size)


def chunks(rows: range, batch_size: int, count: int) -> Iterator[range]:
    """``rows`` in ``count`` consecutive batches of ``batch_size`` (trailing ones empty)."""
    for k in range(count):
        start = min(rows.stop, rows.start + k * batch_size)
        yield range(start, min(rows.stop, start + batch_size))


class EvalBatches(BatchSampler):
    """A rank's evaluation batches over ``sampler``'s rows, as a batch sampler: for a loader of a
    map-style dataset (image files). It keeps ``BatchSampler``'s signature, so that Lightning can
    rebuild it for predict (the rebuilt one yields the same batches)."""

    def __init__(
        self, sampler: Sampler[int], batch_size: int, drop_last: bool = False, dist: DistContext | None = None
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.dist = dist or DistContext()

    def __iter__(self) -> Iterator[list[int]]:
        (share,), count = eval_shares(len(self.sampler), self.batch_size, self.dist, 0)  # type: ignore[arg-type]
        return (list(rows) for rows in chunks(share, self.batch_size, count))

    def __len__(self) -> int:
        return eval_shares(len(self.sampler), self.batch_size, self.dist, 0)[1]  # type: ignore[arg-type]
