"""Differential fuzzing of the NAT core (issue 15): frames from
:mod:`._corpus` run through the real core (C fast path and Python slow
path) and, one by one, through the independent model of :mod:`._model`;
every verdict, reason, output byte and checksum is compared.

``appliance bench fuzz --frames N --seed S`` and tests/test_differential.py
run it; a failure names the seed, the frame's number and kind, the frame
in hex and what differed.
"""

from __future__ import annotations

import dataclasses
import random
import time

from ._corpus import CONFIG, Corpus, rules
from ._model import Model, check

__all__ = ["run", "Report", "Mismatch"]

#: frames per episode: a fresh core and model, well below the table's pressure threshold
EPISODE = 4000
BATCH = 32
COUNTERS = ("icmp_error_translated", "frag_followed", "udp_zero_csum", "session_hit", "session_miss")


@dataclasses.dataclass
class Mismatch:
    seed: int
    index: int
    kind: str
    iface: str
    frame: bytes
    problems: list

    def __str__(self) -> str:
        return (f"seed {self.seed}, frame {self.index} ({self.kind}, on {self.iface}): "
                f"{'; '.join(self.problems)}\n  frame: {self.frame.hex()}")


@dataclasses.dataclass
class Report:
    seed: int
    frames: int = 0
    mismatches: list = dataclasses.field(default_factory=list)
    verdicts: dict = dataclasses.field(default_factory=dict)    # "translated"/"passed"/drop reason -> frames
    kinds: dict = dataclasses.field(default_factory=dict)
    #: the core's own counters of what it did that no verdict names
    counters: dict = dataclasses.field(default_factory=dict)
    #: the model's less common paths, as it took them (Model.paths)
    paths: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"seed": self.seed, "frames": self.frames, "mismatches": len(self.mismatches),
                "first_mismatch": str(self.mismatches[0]) if self.mismatches else None,
                "verdicts": dict(sorted(self.verdicts.items())), "kinds": dict(sorted(self.kinds.items())),
                "counters": self.counters, "paths": dict(sorted(self.paths.items())),
                "seconds": round(self.seconds, 1)}


def run(frames: int, seed: int = 1, stop_after: int = 1, exact: bool = False) -> Report:
    """Fuzz ``frames`` frames; stop after ``stop_after`` mismatches (0: never).
    ``exact``: every frame in an allocation of its own length (for ASan)."""
    from .._config import parse_config
    from .._plugins import Plugins
    from ..nat import Batch, NatCore, Verdict
    from ..nat._binding import COUNTER_NAMES

    rep = Report(seed)
    t0 = time.perf_counter()
    rnd = random.Random(seed)
    config = parse_config(CONFIG, "<fuzz>")
    batch = Batch(BATCH, exact=exact)
    now = 1000.0
    def tally(core, corpus) -> None:
        got = core.counters()
        for name in COUNTERS:
            rep.counters[name] = rep.counters.get(name, 0) + got[name]
        for k, v in corpus.counts.items():
            rep.kinds[k] = rep.kinds.get(k, 0) + v
        for k, v in corpus.model.paths.items():
            rep.paths[k] = rep.paths.get(k, 0) + v

    while rep.frames < frames:
        core = NatCore(config, Plugins(entry_points=False, first_party=False), table_seed=rnd.randrange(1 << 32))
        model = Model(rules())
        corpus = Corpus(model, rnd)
        done = 0
        while done < EPISODE and rep.frames < frames:
            todo = corpus.batch(min(BATCH, frames - rep.frames))
            batch.load([(f, core.port(iface), now) for f, iface, _ in todo])
            core.process(batch, now)
            for i, (frame, iface, kind) in enumerate(todo):
                fr = batch.frames[i]
                reason = COUNTER_NAMES[fr.reason]
                if fr.verdict == Verdict.FORWARD:
                    verdict = "translated"
                else:
                    verdict = "passed" if fr.verdict == Verdict.PASS else "drop"
                rep.verdicts[reason] = rep.verdicts.get(reason, 0) + 1
                want = model.expect(frame, iface)
                problems = check(frame, want, verdict, reason, batch.data(i))
                if problems:
                    rep.mismatches.append(Mismatch(seed, rep.frames + i, kind, iface, frame, problems))
                    if stop_after and len(rep.mismatches) >= stop_after:
                        rep.frames += i + 1
                        tally(core, corpus)
                        rep.seconds = time.perf_counter() - t0
                        return rep
            rep.frames += len(todo)
            done += len(todo)
        tally(core, corpus)
    rep.seconds = time.perf_counter() - t0
    return rep
