"""Prefix-aware routing: send a prompt to the replica that already caches its prefix.

Per model (and LoRA adapter: its KV differs), a :class:`~routing.prefix_index.PrefixIndex`
remembers which replica was sent which prompt blocks. For a new request:

1. hash its prompt tokens in blocks of the engine's ``block_size``
   (:mod:`routing.block_hash`; without token ids, the prompt's characters, which still
   match repeats but not at the engine's block boundaries);
2. two guards mark replicas *full*:
   - the load guard: a replica whose load exceeds the least-loaded replica's by more
     than ``balance_abs_threshold`` requests **and** by a factor of more than
     ``balance_rel_threshold`` (load = max(router in-flight, engine running + waiting),
     :func:`routing.load.replica_load`): a replica that is queueing now;
   - the share guard: a replica that was sent more than ``share_bound`` times the mean
     of the last ``share_window`` decisions (and more than ``share_min``), while the
     cluster is busy (:func:`is_busy`): it keeps each replica's share of the traffic
     within ``share_bound`` of the mean over time, which instantaneous in-flight counts,
     noisy at a few requests per replica, cannot do without spilling far too early.
     It moves *shared* prefixes only: a prefix that another request in the window also
     matched as deeply (a group's system prompt). A conversation's turn matches its own
     history one turn deeper each time, a prefix no other request matched, so its
     replica keeps it (only the load guard moves it): moving it would recompute the
     whole conversation to shift one user's traffic.
     With ``hold_while_warming`` (the default), after a shared prefix spills to a
     replica that does not hold it, that replica is *warming* until the spilled
     request's first token (``on_first_token``) or its end: meanwhile the prefix's
     other holders take its requests even over their share, and the warming replica
     ranks after them, so requests do not queue behind the new replica's prefill;
3. full replicas rank last; of the rest, the replica holding the longest cached prefix
   wins (a match shorter than ``min_match_ratio`` of the prompt counts as none); ties go
   to the replica with the least prefill ahead of the request (with ``prefill_aware``,
   the default: prompt blocks this router sent it that it did not cache and has not yet
   answered with a first token), then to the less loaded, then to the one caching fewer
   blocks (so new prefixes spread the cache), then at random. Time to first token is
   the prefill queue's length, which a count of running requests (mostly decoding)
   does not show: a new prefix goes where no long prompt is being computed, and a
   prefix held by several replicas goes to the holder that is not computing another
   prompt.

So a hot prefix stays on its replica until that replica has more than its share, then
the next request goes to the least-loaded replica that is not full, which caches it too;
the prefix spreads over as many replicas as its traffic needs (half the traffic over 8
replicas: 3 to 5 of them) and no replica carries much more than ``share_bound`` times
the mean. With an idle cluster (nothing in flight from this router, and a stale engine
report of a request or two does not count) only the prefix counts, so a lone user's
conversation stays on one replica. After the choice, ``on_routed`` records
the prompt's blocks for the chosen replica and counts the decision.

With a :class:`~routing.kv_cache_view.ClusterCacheView` (``use_kv_view``), replicas whose
engines publish KV-cache events answer from what they really hold (shared by every router
of the model, whichever sent the prompts), plus the prompts this router sent them that
they have not reported yet (:mod:`routing.inflight_prefixes`); the others keep the
approximate index. A new prefix then goes, among equals, to the replica whose cache is
least crowded (blocks held plus recent evictions, scaled up by its KV usage), so groups
spread before they evict each other.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routing.block_hash import BlockHash, HashFn, block_hashes, text_token_ids
from routing.decision import RoutingDecision
from routing.inflight_prefixes import InflightPrefixes
from routing.kv_cache_view import ClusterCacheView
from routing.policy import Candidate, RouteRequest, RoutingPolicy
from routing.prefix_index import PrefixIndex

MatchKey = tuple[str, BlockHash]  # (index key, deepest matched block): a cached prefix
_PENDING_LIMIT = 16_384  # prompts hashed in choose() and not yet routed (bounded leak guard)


@dataclass(frozen=True)
class PrefixMatch:
    """What the index said about one request."""

    index_key: str
    hashes: tuple[BlockHash, ...]
    blocks: dict[str, int]

    @property
    def depth(self) -> int:
        """Blocks of the longest match on any replica (0: none)."""
        return max(self.blocks.values(), default=0)

    def prefix_key(self, depth: int) -> MatchKey | None:
        """The matched prefix ``depth`` blocks deep, as (index key, its last block)."""
        return (self.index_key, self.hashes[depth - 1]) if depth else None


class PrefixAwarePolicy(RoutingPolicy):
    needs_prompt = True

    def __init__(self, block_size: int = 16, max_index_bytes: int = 64 * 1024 * 1024,
                 balance_abs_threshold: float = 64.0, balance_rel_threshold: float = 1.5,
                 min_match_ratio: float = 0.1, share_window: int = 256,
                 share_bound: float = 1.4, share_min: int = 1, share_margin: float = 3.0,
                 hold_while_warming: bool = True, prefill_aware: bool = True,
                 rng: random.Random | None = None,
                 hash_fn: HashFn | None = None) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if share_window < 0 or share_bound < 1.0:
            raise ValueError("need share_window >= 0 and share_bound >= 1, got "
                             f"{share_window}, {share_bound}")
        self.share_window = share_window
        self.share_bound = share_bound
        self.share_min = share_min
        self.share_margin = share_margin
        # this router's requests in flight and the engines' (running + waiting), averaged
        # over about share_window decisions: the part of the traffic it sees
        self._own_load = 0.0
        self._engine_load = 0.0
        self.hold_while_warming = hold_while_warming
        self.prefill_aware = prefill_aware
        # what a routed request leaves behind until its first token or its end (or its
        # replica leaving): request id -> (its replica, the prompt blocks it queued there
        # for prefill, the shared prefix it is warming there or None)
        self._routed: dict[str, tuple[str, int, MatchKey | None]] = {}
        # prompt blocks sent to each replica, not cached there, before their first token
        self._prefilling: dict[str, int] = {}
        # a shared prefix spilled to a replica that is computing it: prefix -> (that
        # replica, the spilled request's id)
        self._warming: dict[MatchKey, tuple[str, str]] = {}
        self._recent: deque[tuple[str, MatchKey | None]] = deque()
        self._recent_counts: dict[str, int] = {}
        self._recent_matches: dict[MatchKey, int] = {}
        self.block_size = block_size
        self.max_index_bytes = max_index_bytes
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.min_match_ratio = min_match_ratio
        self._rng = rng or random.Random()
        self._hash_fn = hash_fn
        self.indexes: dict[str, PrefixIndex] = {}
        self._pending: OrderedDict[str, PrefixMatch] = OrderedDict()
        self.kv_view: ClusterCacheView | None = None
        self._inflight = InflightPrefixes(_PENDING_LIMIT)

    def use_kv_view(self, view: ClusterCacheView) -> None:
        """Answer for replicas whose engines publish KV events from ``view`` (what they
        hold) instead of this router's approximate index (what it sent them)."""
        if view.block_size != self.block_size:
            raise ValueError(f"the KV event view keys blocks of {view.block_size} tokens, "
                             f"this policy {self.block_size}")
        self.kv_view = view

    # ---- the decision -----------------------------------------------------------------
    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        return self.rank(self.match(request), candidates, request.lora_adapter)

    def match(self, request: RouteRequest) -> PrefixMatch | None:
        """Hash the prompt and look it up; remembered until ``on_routed``."""
        tokens = request_tokens(request)
        if tokens is None:
            return None
        key = index_key(request)
        hashes = tuple(block_hashes(tokens, self.block_size, hash_fn=self._hash_fn,
                                    cache_salt=request.cache_salt))
        index = self.indexes.get(key)
        blocks = index.match(hashes) if index is not None and hashes else {}
        view = self.kv_view
        # the engines key blocks of tokens: a prompt hashed by characters (no tokenizer)
        # cannot match their reports, so it is routed by the approximate index alone
        if (view is not None and view.has_live and hashes
                and request.prompt_token_ids is not None):
            blocks = self._with_events(view, key, hashes, blocks)
        min_blocks = self.min_match_ratio * len(tokens) / self.block_size
        blocks = {rid: n for rid, n in blocks.items() if n >= max(1.0, min_blocks)}
        found = PrefixMatch(key, hashes, blocks)
        self._pending[request.request_id] = found
        if len(self._pending) > _PENDING_LIMIT:
            self._pending.popitem(last=False)
        return found

    def _with_events(self, view: ClusterCacheView, key: str, hashes: Sequence[BlockHash],
                     approximate: dict[str, int]) -> dict[str, int]:
        """Event-fed replicas: what they hold, or what this router sent them that they
        have not reported yet; the others: the approximate index."""
        blocks = {rid: n for rid, n in approximate.items() if not view.is_live(rid)}
        blocks.update(view.match(key, hashes))
        for rid, n in self._inflight.match(key, hashes).items():
            if n > blocks.get(rid, 0) and view.is_live(rid):
                blocks[rid] = n
        return blocks

    def rank(self, match: PrefixMatch | None, candidates: Sequence[Candidate],
             adapter: str | None = None) -> list[Candidate]:
        """Best first: not overloaded, holding the request's LoRA ``adapter`` (in
        ``Candidate.model_ids``), longest cached prefix, fewest resident adapters (where
        the adapter would have to be loaded: a load costs least there), least prefill
        queued, least loaded, fewest cached blocks, random. One pass over the candidates
        (this runs per request: 64 replicas cost ~20 µs here, most of a decision)."""
        if not candidates:
            return []
        # one pass for the loads (replica_load, inlined: this runs per candidate) and the
        # router's and the engines' totals
        loads: list[float] = []
        own = 0
        engines = 0.0
        for c in candidates:
            stats = c.stats
            engine = stats.get("num_running", 0.0) + stats.get("num_waiting", 0.0)
            ongoing = c.num_ongoing
            own += ongoing
            engines += engine
            loads.append(float(ongoing) if ongoing > engine else engine)
        min_load = min(loads)
        # is_overloaded(load, min_load, abs, rel), as one bound: load > bound
        bound = max(min_load + self.balance_abs_threshold, min_load * self.balance_rel_threshold)
        blocks = match.blocks if match is not None else {}
        index = self.indexes.get(match.index_key) if match is not None else None
        cached: Mapping[str, float] = index.blocks_per_replica if index is not None else {}
        view = self.kv_view
        # event-fed replicas: how crowded their caches are (blocks held + recent evictions)
        pressures = view.pressures() if view is not None and view.has_live else None
        recent = self._recent_counts
        shares = [recent.get(c.replica_id, 0) for c in candidates]
        # full: sent more than share_bound x the mean of the recent decisions, while the
        # cluster is busy (an idle cluster keeps a lone user's prefix in one place)
        share_cap = max(self.share_min, self.share_bound * sum(shares) / len(shares))
        # with several ingresses each sees a part of the traffic, and its counts of a few
        # decisions are noisy: over the cap by share_margin standard deviations (scaled by
        # the part it does not see; a lone router keeps the cap as it is)
        share_cap += self.share_margin * self._unseen(own, engines) * math.sqrt(share_cap)
        if not is_busy(own, loads):
            share_cap = float("inf")
        # a private prefix (a conversation's own history: no other recent request matched
        # this deep) stays where it is cached; the share guard moves shared prefixes only
        depth = match.depth if match is not None else 0
        private, warming = -1, None
        key = match.prefix_key(depth) if match is not None else None
        if key is not None:
            if not self._recent_matches.get(key):
                private = depth
            spilled = self._warming.get(key)
            if spilled is not None:
                # the last spill of this prefix is still computing it: its holders keep
                # taking it, over their share, and that replica ranks after them
                private, warming = depth, spilled[0]
        rand = self._rng.random
        prefilling = self._prefilling if self.prefill_aware else {}
        # bound lookups: this loop runs per candidate, per request
        held_of, queued_of, cached_of = blocks.get, prefilling.get, cached.get
        pressure_of = (pressures or {}).get
        keyed = []
        for i, c in enumerate(candidates):
            rid = c.replica_id
            load = loads[i]
            held: float = held_of(rid, 0)
            full = load > bound or (shares[i] > share_cap and held != private)
            if rid == warming:
                held -= 0.5  # after the holders that have computed it, before the rest
            # an adapter request: where it is resident first; else where a load costs least
            miss = adapter is not None and adapter not in c.model_ids
            crowding = pressure_of(rid)
            if crowding is None:
                crowding = cached_of(rid, 0)
            else:  # blocks held + recent evictions, scaled up by the KV usage (0..1)
                usage = c.stats.get("kv_cache_usage", 0.0)
                crowding *= 2.0 if usage >= 1.0 else 1.0 + usage if usage > 0.0 else 1.0
            keyed.append((full, miss, -held, len(c.model_ids) if miss else 0, queued_of(rid, 0),
                          load, crowding, rand(), i))
        keyed.sort()
        self.last_decision = self._explain(depth, blocks, candidates[keyed[0][-1]].replica_id,
                                           candidates, loads, bound)
        return [candidates[k[-1]] for k in keyed]

    def _unseen(self, own: int, engines: float) -> float:
        """The part of the cluster's requests in flight that this router did not send
        (0 alone; about 1 - 1/N behind N routers), from the engines' own counts: ``own``
        is this router's requests in flight, ``engines`` the engines' running + waiting."""
        alpha = 1.0 / max(1, self.share_window)
        self._own_load += alpha * (own - self._own_load)
        self._engine_load += alpha * (engines - self._engine_load)
        if self._engine_load <= self._own_load or self._engine_load <= 0:
            return 0.0
        return 1.0 - self._own_load / self._engine_load

    def _explain(self, depth: int, blocks: dict[str, int], chosen: str,
                 candidates: Sequence[Candidate], loads: Sequence[float],
                 bound: float) -> RoutingDecision:
        """For metrics: hit, miss, or spill and the guard that marked the holders full."""
        tokens = depth * self.block_size
        if depth == 0:
            return RoutingDecision("miss")
        if blocks.get(chosen, 0) >= depth:
            return RoutingDecision("hit", tokens)
        by_load = any(blocks.get(c.replica_id, 0) >= depth and load > bound
                      for c, load in zip(candidates, loads, strict=True))
        return RoutingDecision("spill", tokens, "load" if by_load else "share")

    # ---- hooks ------------------------------------------------------------------------
    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        found = self._pending.pop(request.request_id, None)
        if found is None:  # routed without a choice (a single replica): hash it now
            self.match(request)
            found = self._pending.pop(request.request_id, None)
        depth = found.depth if found is not None else 0
        key = found.prefix_key(depth) if found is not None else None
        self._count_recent(replica_id, key)
        if found is None or not found.hashes:
            return
        held = found.blocks.get(replica_id, 0)
        # spilled here (others hold more of a shared prefix): it warms until it computes it
        warms = key if self.hold_while_warming and held < depth else None
        queued = len(found.hashes) - held if self.prefill_aware else 0
        if warms is not None or queued > 0:
            self._track(request.request_id, replica_id, queued, warms)
        view = self.kv_view
        if (view is not None and view.is_live(replica_id)
                and request.prompt_token_ids is not None):
            # the engine will report these blocks; until then they are in flight (the
            # approximate index, not read for this replica, is left alone: a decision
            # costs less, and a replica whose events break restarts it empty)
            if held < len(found.hashes):
                self._inflight.add(request.request_id, found.index_key, found.hashes,
                                   replica_id)
            return
        index = self.indexes.get(found.index_key)
        if index is None:
            index = self.indexes[found.index_key] = PrefixIndex(self.max_index_bytes)
        index.insert(found.hashes, replica_id)

    def on_first_token(self, request: RouteRequest, replica_id: str) -> None:
        self._forget(request.request_id)

    def on_finished(self, request: RouteRequest, replica_id: str) -> None:
        self._forget(request.request_id)

    def on_replicas_changed(self, replica_ids: Sequence[str]) -> None:
        for index in self.indexes.values():
            index.retain_replicas(replica_ids)
        live = set(replica_ids)
        for request_id, (rid, _, _) in list(self._routed.items()):
            if rid not in live:
                self._forget(request_id)

    def _track(self, request_id: str, replica_id: str, queued: int,
               warms: MatchKey | None) -> None:
        """``request_id`` queued ``queued`` prompt blocks on ``replica_id`` and, when
        ``warms`` is a prefix, is computing that shared prefix there (a spill; the
        prefix's last spill is the one that counts)."""
        self._forget(request_id)  # routed again (a retry): it is on this replica now
        self._routed[request_id] = (replica_id, queued, warms)
        if queued:
            _increment(self._prefilling, replica_id, queued)
        if warms is not None:
            self._warming[warms] = (replica_id, request_id)
        if len(self._routed) > _PENDING_LIMIT:  # hooks never called: forget the oldest
            self._forget(next(iter(self._routed)))

    def _forget(self, request_id: str) -> None:
        """The request has its first token (or ended, or its replica left)."""
        self._inflight.remove(request_id)
        done = self._routed.pop(request_id, None)
        if done is None:
            return
        replica_id, queued, warms = done
        if queued:
            _increment(self._prefilling, replica_id, -queued)
        if warms is not None and self._warming.get(warms, ("", ""))[1] == request_id:
            del self._warming[warms]  # unless a later spill of the prefix took over

    def _count_recent(self, replica_id: str, matched: MatchKey | None) -> None:
        """Count the decision (and the deepest prefix it matched) in the sliding window."""
        if self.share_window <= 0:
            return
        self._recent.append((replica_id, matched))
        _increment(self._recent_counts, replica_id, 1)
        if matched is not None:
            _increment(self._recent_matches, matched, 1)
        if len(self._recent) > self.share_window:
            old, old_match = self._recent.popleft()
            _increment(self._recent_counts, old, -1)
            if old_match is not None:
                _increment(self._recent_matches, old_match, -1)


def _increment(counts: dict[Any, int], key: Any, by: int) -> None:
    left = counts.get(key, 0) + by
    if left:
        counts[key] = left
    else:
        del counts[key]


def is_busy(own_in_flight: int, loads: Sequence[float]) -> bool:
    """Does balance matter now? This router has a request in flight (``own_in_flight``,
    over all candidates), or the engines report at least one request per replica
    (``loads``, one per candidate: traffic from other ingress processes). Engine stats
    are a refresh period old: one request that finished since does not make it busy."""
    return own_in_flight > 0 or sum(loads) >= len(loads)


def request_tokens(request: RouteRequest) -> Sequence[int] | None:
    if request.prompt_token_ids is not None:
        return request.prompt_token_ids
    if request.prompt is not None:
        return text_token_ids(request.prompt)
    return None


def index_key(request: RouteRequest) -> str:
    """One index per model and adapter (an adapter's KV differs from the base model's)."""
    return adapter_index_key(request.model_id, request.lora_adapter)


def adapter_index_key(model_id: str, adapter: str | None) -> str:
    return f"{model_id}\x00{adapter}" if adapter else model_id
