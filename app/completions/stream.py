"""A completion streamed as OpenAI's chunks (vLLM's stream, field for field).

Every prompt's n choices are admitted together before the stream opens (EngineBusy:
429, all or none), and their chunks interleave as the tokens come, each chunk with
its choice's `index` (prompt × n + choice). A choice's `finish_reason` rides on the
chunk of its last token; a choice that ends without a token of its own (a stop string
that took back the text, a constraint's dead end) gets a closing chunk with no text.
`stream_options.include_usage` adds a last chunk with the usage and no choices;
`continuous_usage_stats` puts the usage so far (its prompt, its choice's tokens) in
every chunk. Then `data: [DONE]`.
"""

from __future__ import annotations

import json
from typing import Any

from app.api.render import Choice, Event, Interleaved, Running
from app.completions import logprobs as rendered
from app.completions.protocol import (
    CompletionChoice,
    CompletionFinishReason,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
)
from app.completions.serving import PreparedCompletion, last_prompt_token, openai_finish, prepare_completion
from app.engine import Generation, TokenEvent
from app.errors import InvalidRequest
from app.models.registry import ModelRegistry
from app.settings import Settings


async def start_stream(
    models: ModelRegistry, settings: Settings, request: CompletionRequest
) -> tuple[Running, CompletionStream]:
    """Check the request and admit every prompt's n choices (EngineBusy when full), before the stream opens."""
    prepared = prepare_completion(models, settings, request)
    if request.suffix is not None or request.use_beam_search:
        field = "suffix" if request.suffix is not None else "use_beam_search"
        raise InvalidRequest(f"{field} is not streamed: the answer is a search's, known at its end", field=field)
    engine = prepared.served.engine
    generations: list[Generation] = []
    try:
        for plan, prompt in zip(prepared.plans, prepared.prompts, strict=True):
            generations.append(
                await engine.generate(engine.fresh(), plan, prompt.ids, n=request.n, priority=request.priority)
            )
    except BaseException:
        for generation in generations:  # a refusal of one: none of them runs
            generation.cancel()
        raise
    running: Running = generations[0] if len(generations) == 1 else Interleaved(generations)
    return running, CompletionStream(prepared)


class CompletionStream:
    """OpenAI's stream: `data: {chunk}` per token of each choice, its finish on its last one, `data: [DONE]`."""

    def __init__(self, prepared: PreparedCompletion) -> None:
        self.prepared = prepared
        request = prepared.request
        self.spelling = prepared.spelling
        # per choice, numbered prompt by prompt
        self.prompt_of = [prompt for prompt in prepared.prompts for _ in range(request.n)]
        self.position = [len(p.text) if request.echo else 0 for p in self.prompt_of]
        self.previous = [last_prompt_token(prepared, p) for p in self.prompt_of]
        self.first = [True] * len(self.prompt_of)  # its first chunk: the echo and prompt_token_ids go there
        self.finished = [False] * len(self.prompt_of)
        self.generated = [0] * len(self.prompt_of)

    def token(self, event: TokenEvent) -> Event:
        choice, request = event.choice, self.prepared.request
        logprobs = None
        if request.logprobs is not None:
            logprobs = rendered.generated(self.spelling, [event], self.previous[choice], self.position[choice])
        self.position[choice] += len(event.piece)
        self.previous[choice] = event.token_id
        self.generated[choice] += 1
        finish = None if event.finish is None else openai_finish(event.finish)
        self.finished[choice] = finish is not None
        return self._chunk(choice, event.text, logprobs, finish, [event.token_id], event.stop_reason)

    async def finish(self, choices: list[Choice]) -> list[Event]:
        closing = [
            self._chunk(c.result.choice, "", None, openai_finish(c.result.finish_reason), [], c.result.stop_reason)
            for c in choices
            if not self.finished[c.result.choice]
        ]
        options = self.prepared.request.stream_options
        if options is not None and options.include_usage:
            generated = sum(len(c.result.token_ids) for c in choices)
            cached = sum(c.result.cached for c in choices if c.result.choice % self.prepared.request.n == 0)
            closing.append(
                {"data": self.prepared.response([], self.prepared.usage(generated, cached)).model_dump_json()}
            )
        return [*closing, {"data": "[DONE]"}]

    def error(self, body: dict[str, Any]) -> Event:
        return {"data": json.dumps(body)}

    def _chunk(
        self,
        index: int,
        text: str,
        logprobs: CompletionLogprobs | None,
        finish: CompletionFinishReason | None,
        token_ids: list[int],
        stop_reason: int | str | None = None,
    ) -> Event:
        request, prompt = self.prepared.request, self.prompt_of[index]
        first, self.first[index] = self.first[index], False
        echoed = prompt.text if first and request.echo else ""
        given = prompt.given(self.prepared.tokenizer.boundary_id)
        choice = CompletionChoice(
            index=index,
            text=echoed + text,
            logprobs=logprobs,
            finish_reason=finish,
            stop_reason=stop_reason,
            prompt_token_ids=given if first and request.return_token_ids else None,
            token_ids=token_ids if request.return_token_ids else None,
        )
        usage = None
        options = request.stream_options
        if options is not None and options.continuous_usage_stats:
            usage = CompletionUsage.counted(len(given), self.generated[index], 0)
            usage.prompt_tokens_details = None
        return {"data": self.prepared.response([choice], usage).model_dump_json()}
