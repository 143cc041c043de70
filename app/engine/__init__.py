"""One batching scheduler per model: every decode of the service runs here, on its own worker thread.

Every operation starts from a single-row `SequenceState` (a recurrent state plus the
*pending* token, see model/inference.py) and hands back final `SequenceState`s, so a
caller can keep a sequence anywhere (in memory, in Redis) and continue it later:

    start = engine.fresh()                                   # start of a line
    fed = await engine.feed(start, ids)                      # logprobs of ids, state after them
    dist = await engine.next_token(fed.end)                  # log p(next | everything so far), (V,)
    async with await engine.generate(fed.end, settings, n=2) as gen:   # sample 2 choices; TokenEvents
        async for event in gen: ...
    gen.results[0].end                                       # choice 0's state after its tokens
    found = await (await engine.beam(fed.end, beam_settings)).hypotheses()   # beam search (also the fill's spans)

The parts, each a module:
- engine.py: `Engine`, which compiles a call's constraint (on a thread), builds its job
  and admits it (ConstraintError, EngineBusy before anything starts);
- scheduler.py: the worker thread: one admission, the feeding of prompts, one batched
  forward per tick, and the hand-off of results to each event loop;
- job.py: what a job and a decode row are; query.py, sampled.py and beam.py: the kinds
  (plain feeds and next-token queries, sampled generation, beam search);
- constraint.py: constrained decoding (a regex, choice, JSON schema or grammar), llguidance's
  matchers over the model's byte view, compiled once per request off the event loop;
  row_constraint.py: one row's constraint (its matcher, masks and the mask coming), owned by
  sampled and beam rows alike;
- prefix_cache.py: the states after prompts' prefixes, kept across requests (the
  scheduler resumes a prompt from the longest one);
- output.py: generated ids to text (UTF-8 assembly and stop strings); types.py: the
  values that go in and come out.
"""

from app.engine.beam import BeamRun
from app.engine.constraint import Constraint
from app.engine.engine import Engine
from app.engine.sampled import Generation
from app.engine.types import (
    FeedResult,
    FinishReason,
    GenerationResult,
    GenerationSettings,
    Hooks,
    NextTokenResult,
    SequenceState,
    TokenEvent,
    Top,
    finite,
)

__all__ = [
    "BeamRun",
    "Constraint",
    "Engine",
    "FeedResult",
    "FinishReason",
    "Generation",
    "GenerationResult",
    "GenerationSettings",
    "Hooks",
    "NextTokenResult",
    "SequenceState",
    "TokenEvent",
    "Top",
    "finite",
]
