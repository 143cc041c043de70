"""Sessions: a sequence whose hidden state lives in the session store, so any replica can continue it.

Every call loads the record (restarting its TTL), runs the engine from the stored
(state, pending token) and writes the outcome back with a compare-and-set on the
version it read. Of two calls racing on one session the one that finishes second gets
409 and changes nothing; calls are not serialised (the client retries, or orders its
calls with `expected_version`).

Text fed in pieces is tokenised as if it had come in one piece (text.py).
"""

from __future__ import annotations

import hmac
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from app.api.conversion import generation_settings
from app.api.limits import check_text, check_top_k
from app.api.render import Choice, Event, collect
from app.api.schemas import Usage
from app.engine import Generation, GenerationResult, SequenceState
from app.errors import InvalidRequest, NotFound, SessionConflict, StoreUnavailable
from app.generate.serving import NativeStream, generated_token, next_token_response
from app.models.registry import ModelRegistry, ServedModel
from app.score.protocol import ScoredToken
from app.sessions.codec import SessionCodecError, SessionRecord, decode_session, encode_session
from app.sessions.protocol import (
    SessionCreateRequest,
    SessionFeedRequest,
    SessionFeedResponse,
    SessionForkRequest,
    SessionGenerateRequest,
    SessionGenerateResponse,
    SessionInfo,
    SessionNextTokenResponse,
    SessionStreamDone,
)
from app.sessions.store import EmbeddedRedis, RedisSessionStore, SessionStore, VersionConflict
from app.sessions.text import check_no_join, split_unfinished
from app.sessions.transfer import export_session, importing_model, read_export
from app.settings import Settings
from model.tokenizer import Encoding

SESSION_ID = re.compile(r"[0-9a-f]{32}")


def new_session_id() -> str:
    return secrets.token_hex(16)  # 128 random bits


@dataclass(frozen=True)
class LoadedSession:
    """A session read from the store, checked against the model that will continue it."""

    id: str
    record: SessionRecord
    version: int
    expires_in: float
    served: ServedModel

    def start(self) -> SequenceState:
        """The stored sequence on the model's device and dtype (a GPU replica may continue a CPU one's)."""
        weight = self.served.checkpoint.model.decoder.weight
        return SequenceState(self.record.model_state(weight.device, weight.dtype), self.record.pending_id)


@dataclass(frozen=True)
class SessionGeneration:
    """A checked session generate call, ready for the engine."""

    session: LoadedSession
    flushed: Encoding  # the pending text, fed before sampling
    generation: Generation

    def usage(self, completion_tokens: int) -> Usage:
        return Usage.of(self.session.record.token_count + len(self.flushed.ids), completion_tokens)


class SessionService:
    """The session calls, on a store and the loaded models; knows nothing of HTTP."""

    def __init__(self, store: SessionStore, models: ModelRegistry, settings: Settings) -> None:
        self.store = store
        self.models = models
        self.settings = settings

    async def reachable(self) -> bool:
        try:
            await self.store.ping()
        except StoreUnavailable:
            return False
        return True

    async def create(self, request: SessionCreateRequest, owner: str | None = None) -> SessionInfo:
        served = self.models.get(request.model)
        ttl = self._ttl(request.ttl, self.settings.session_ttl)
        check_text(self.settings, request.prompt, "prompt")
        tokenizer = served.checkpoint.tokenizer
        ready, unfinished = split_unfinished(tokenizer, request.prompt, request.flush)
        ids = tokenizer.encode(ready).ids
        start = served.engine.fresh()
        end = (await served.engine.feed(start, ids, with_logprobs=False)).end if ids else start
        now = time.time()
        record = SessionRecord.from_state(
            end.state,
            model=served.id,
            pending_id=end.pending,
            token_count=len(ids),
            ttl=ttl,
            created_at=now,
            updated_at=now,
            pending_text=unfinished,
            history=self._history((), ids),
            owner=owner,
        )
        session_id = new_session_id()
        version = await self._put(session_id, record, 0)
        return session_info(session_id, record, version, ttl)

    async def get(self, session_id: str, owner: str | None = None) -> SessionInfo:
        session = await self._load(session_id, model=None, expected_version=None, owner=owner)
        return session_info(session.id, session.record, session.version, session.expires_in)

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        await self._load(session_id, model=None, expected_version=None, owner=owner)  # 404 unless the caller's
        if not await self.store.delete(session_id):
            raise _not_found(session_id)

    async def feed(self, session_id: str, request: SessionFeedRequest, owner: str | None = None) -> SessionFeedResponse:
        session = await self._load(session_id, request.model, request.expected_version, owner)
        check_text(self.settings, request.text, "text")
        tokenizer = session.served.checkpoint.tokenizer
        check_no_join(tokenizer, session.record.pending_id, request.text)
        ready, unfinished = split_unfinished(tokenizer, session.record.pending_text + request.text, request.flush)
        check_text(self.settings, unfinished, "the unfinished word (pending_text)")
        encoding = tokenizer.encode(ready)
        if encoding.ids:
            result = await session.served.engine.feed(session.start(), encoding.ids)
            end, logprobs = result.end, result.logprobs
        else:
            end, logprobs = session.start(), []
        info = await self._save(session, end, encoding.ids, unfinished)
        tokens = [
            ScoredToken(id=i, token=tokenizer.tokens[i], logprob=logprob, unknown=unknown)  # as /v1/score has it
            for i, logprob, unknown in zip(encoding.ids, logprobs, encoding.unknown, strict=True)
        ]
        return SessionFeedResponse(session=info, tokens=tokens, logprob=math.fsum(logprobs))

    async def next_token(
        self, session_id: str, top_k: int | None, model: str | None, owner: str | None = None
    ) -> SessionNextTokenResponse:
        """The next-token distribution; the pending text is fed for the answer but stays pending."""
        session = await self._load(session_id, model, expected_version=None, owner=owner)
        served = session.served
        tokenizer = served.checkpoint.tokenizer
        check_top_k(tokenizer, top_k, served.id)
        ids = tokenizer.encode(session.record.pending_text).ids
        result = await served.engine.next_token(session.start(), ids)
        answer = next_token_response(served, result, session.record.token_count + len(ids), top_k)
        info = session_info(session.id, session.record, session.version, session.expires_in)
        return SessionNextTokenResponse.model_construct(session=info, **dict(answer))  # both already validated

    async def fork(self, session_id: str, request: SessionForkRequest, owner: str | None = None) -> SessionInfo:
        session = await self._load(session_id, request.model, request.expected_version, owner)
        ttl = self._ttl(request.ttl, session.record.ttl)
        now = time.time()
        record = session.record.updated(ttl=ttl, created_at=now, updated_at=now)
        fork_id = new_session_id()
        version = await self._put(fork_id, record, 0)
        return session_info(fork_id, record, version, ttl)

    async def export(self, session_id: str, owner: str | None = None) -> bytes:
        """The session as one safetensors file (app/sessions/transfer.py)."""
        session = await self._load(session_id, model=None, expected_version=None, owner=owner)
        return export_session(session.record, session.served)

    async def import_file(
        self, data: bytes, model: str | None = None, ttl: float | None = None, owner: str | None = None
    ) -> SessionInfo:
        """A new session from an exported file, for `model` (default: the file's); 409 for other weights."""
        exported = read_export(data)
        served = importing_model(exported, self.models, model)
        ttl = self._ttl(ttl, self.settings.session_ttl)
        record = exported.record(served, ttl, time.time(), owner, keep=self.settings.session_history_tokens)
        session_id = new_session_id()
        version = await self._put(session_id, record, 0)
        return session_info(session_id, record, version, ttl)

    async def start_generation(
        self, session_id: str, request: SessionGenerateRequest, owner: str | None = None
    ) -> SessionGeneration:
        """Check the call and admit it to the engine (EngineBusy when full); the pending text is fed first."""
        session = await self._load(session_id, request.model, request.expected_version, owner)
        tokenizer = session.served.checkpoint.tokenizer
        flushed = tokenizer.encode(session.record.pending_text)
        history = [*session.record.history, *flushed.ids]
        settings = generation_settings(self.settings, session.served, request, history)
        settings = replace(settings, carried_bytes=session.record.pending_bytes)  # a character begun before
        generation = await session.served.engine.generate(session.start(), settings, flushed.ids)
        return SessionGeneration(session, flushed, generation)

    async def generate(self, prepared: SessionGeneration) -> SessionGenerateResponse:
        tokenizer = prepared.session.served.checkpoint.tokenizer
        (choice,) = await collect(prepared.generation)
        info = await self.save_generation(prepared, choice.result)
        return SessionGenerateResponse(
            session=info,
            text=choice.text,
            finish_reason=choice.result.finish_reason,
            tokens=[generated_token(tokenizer, event) for event in choice.events],
            usage=prepared.usage(len(choice.result.token_ids)),
        )

    def stream(self, prepared: SessionGeneration) -> SessionStream:
        """Events as /v1/generate's, then `done` with the saved session (or `error`).

        A client that leaves early cancels the generation; the session then stays as it was.
        """
        return SessionStream(self, prepared)

    async def save_generation(self, prepared: SessionGeneration, result: GenerationResult) -> SessionInfo:
        """The session after the flushed text and every generated token (a stop string included)."""
        ids = [*prepared.flushed.ids, *result.token_ids]
        return await self._save(prepared.session, result.end, ids, "", result.held_bytes)

    async def _load(
        self, session_id: str, model: str | None, expected_version: int | None, owner: str | None = None
    ) -> LoadedSession:
        """The session, if it exists and belongs to `owner` (another caller's session is "not found")."""
        if not SESSION_ID.fullmatch(session_id):
            raise _not_found(session_id)
        item = await self.store.get(session_id, renew=True)
        if item is None:
            raise _not_found(session_id)
        try:
            record = decode_session(item.value)
        except SessionCodecError as exc:
            raise SessionConflict(
                f"session {session_id} cannot be read ({exc}); delete it", reason="unreadable"
            ) from exc
        if not _same_owner(record.owner, owner):
            raise _not_found(session_id)
        if expected_version is not None and expected_version != item.version:
            raise SessionConflict(
                f"session {session_id} is at version {item.version}, not the expected {expected_version}",
                reason="version",
                version=item.version,
            )
        if model is not None and model != record.model:
            raise SessionConflict(
                f"session {session_id} belongs to model {record.model!r}, not {model!r}", reason="model"
            )
        served = self.models.models.get(record.model)
        if served is None:
            raise SessionConflict(
                f"session {session_id} belongs to model {record.model!r}, which is not loaded on this server",
                reason="model_not_loaded",
            )
        _check_shape(session_id, record, served)
        return LoadedSession(session_id, record, item.version, item.expires_in, served)

    async def _save(
        self, session: LoadedSession, end: SequenceState, ids: list[int], pending_text: str, pending_bytes: bytes = b""
    ) -> SessionInfo:
        """The record after `ids`. A feed drops `pending_bytes`: text after an unfinished character ends it."""
        record = SessionRecord.from_state(
            end.state,
            model=session.record.model,
            pending_id=end.pending,
            token_count=session.record.token_count + len(ids),
            ttl=session.record.ttl,
            created_at=session.record.created_at,
            updated_at=time.time(),
            pending_text=pending_text,
            pending_bytes=pending_bytes,
            history=self._history(session.record.history, ids),
            owner=session.record.owner,
        )
        version = await self._put(session.id, record, session.version)
        return session_info(session.id, record, version, record.ttl)

    async def _put(self, session_id: str, record: SessionRecord, expected_version: int) -> int:
        try:
            return await self.store.put_if_version(session_id, encode_session(record), expected_version, record.ttl)
        except VersionConflict as exc:
            if exc.current is None:
                raise NotFound(f"session {session_id} expired or was deleted during this call") from exc
            raise SessionConflict(
                f"session {session_id} changed during this call (now version {exc.current}); nothing was saved",
                reason="version",
                version=exc.current,
            ) from exc

    def _history(self, history: tuple[int, ...], ids: list[int]) -> tuple[int, ...]:
        keep = self.settings.session_history_tokens
        return (*history, *ids)[-keep:] if keep else ()

    def _ttl(self, requested: float | None, default: float) -> float:
        ttl = default if requested is None else requested
        if ttl > self.settings.max_session_ttl:
            raise InvalidRequest(
                f"ttl={ttl:g} seconds is more than max_session_ttl={self.settings.max_session_ttl:g}",
                limit="max_session_ttl",
            )
        return ttl


def session_info(session_id: str, record: SessionRecord, version: int, expires_in: float) -> SessionInfo:
    return SessionInfo(
        id=session_id,
        model=record.model,
        token_count=record.token_count,
        pending_text=record.pending_text,
        version=version,
        ttl=record.ttl,
        expires_in=round(expires_in, 3),
        created_at=datetime.fromtimestamp(record.created_at, tz=timezone.utc),
        updated_at=datetime.fromtimestamp(record.updated_at, tz=timezone.utc),
    )


def _check_shape(session_id: str, record: SessionRecord, served: ServedModel) -> None:
    config = served.checkpoint.config
    expected = [(config.num_layers, 1, config.hidden_size)] * (2 if config.cell == "lstm" else 1)
    found = [tuple(t.shape) for t in record.state]
    if found != expected or not 0 <= record.pending_id < config.vocab_size:
        raise SessionConflict(
            f"session {session_id}'s state {found} does not fit model {served.id!r} (expects {expected}); "
            "the model was replaced since the session began",
            reason="state_shape",
        )


def _same_owner(stored: str | None, caller: str | None) -> bool:
    """Whether the caller owns the session: the same key digest (compared in constant time), or neither has one."""
    if stored is None or caller is None:
        return stored is caller
    return hmac.compare_digest(stored.encode(), caller.encode())


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"no session {session_id!r} (unknown, expired or deleted)", session=session_id)


class SessionStream(NativeStream):
    """A session generation's stream: the native token events; `done` once the session is saved."""

    def __init__(self, sessions: SessionService, prepared: SessionGeneration) -> None:
        self.sessions = sessions
        self.session_generation = prepared
        self.tokenizer = prepared.session.served.checkpoint.tokenizer

    async def finish(self, choices: list[Choice]) -> list[Event]:
        (choice,) = choices
        prepared = self.session_generation
        info = await self.sessions.save_generation(prepared, choice.result)
        done = SessionStreamDone(
            session=info,
            model=prepared.session.served.id,
            finish_reason=choice.result.finish_reason,
            usage=prepared.usage(len(choice.result.token_ids)),
        )
        return [{"event": "done", "data": done.model_dump_json()}]


@asynccontextmanager
async def open_sessions(settings: Settings, models: ModelRegistry) -> AsyncIterator[SessionService]:
    """The session service on `RNNLM_REDIS_URL`, or on a private redis-server started here."""
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.redis_dir)
        url = embedded.start()
    store = RedisSessionStore.from_url(url, timeout=settings.redis_timeout, cluster=settings.redis_cluster)
    try:
        yield SessionService(store, models, settings)
    finally:
        await store.close()
        if embedded is not None:
            embedded.stop()
