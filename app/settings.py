"""The server's configuration: one pydantic-settings class, read from RNNLM_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; built once in the app factory (never at import)."""

    model_config = SettingsConfigDict(env_prefix="RNNLM_", extra="ignore")

    models_dir: Path = Field(
        default=Path("models"), description="one checkpoint directory per model; its name is the model id"
    )
    default_model: str | None = Field(
        default=None, description="model used when a request names none (else the first by name)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="the weights' and recurrent states' precision; auto = bfloat16 where the device computes it "
        "natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else float32; logprobs are float32 either way",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    models_poll_seconds: float = Field(
        default=2.0,
        ge=0,
        description="seconds between looks at the models directory for checkpoints added or removed (0 = never)",
    )
    skip_bad_models: bool = Field(
        default=False, description="skip (and log) a checkpoint that cannot be loaded instead of refusing to start"
    )

    # Security: unset = no keys needed.
    api_keys: SecretStr | None = Field(
        default=None, description="comma-separated API keys; when set, /v1 and /info, /metrics need one"
    )

    # Limits, all published at /info.
    max_body_bytes: int = Field(default=1_048_576, ge=1, description="request body size, checked before parsing")
    max_text_chars: int = Field(default=20_000, ge=1, description="characters in a prompt, context or scored text")
    max_tokens_limit: int = Field(default=2048, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(default=64, ge=0, description="max_tokens when a request gives none")
    max_score_texts: int = Field(default=64, ge=1, description="texts per /v1/score call (and prompts per completion)")
    max_logprobs: int = Field(default=20, ge=0, description="top alternatives per generated token")
    max_stop_strings: int = Field(default=8, ge=0, description="stop strings per request")
    max_stop_chars: int = Field(default=100, ge=1, description="characters per stop string")
    max_active_sequences: int = Field(default=64, ge=1, description="decode rows held at once per model (then 429)")
    max_queued_requests: int = Field(
        default=4096, ge=1, description="plain feeds (scoring, session feeds) waiting or running per model (then 429)"
    )
    share_prefixes: bool = Field(
        default=True, description="completions: feed a prefix shared by a request's prompts once and fork its state"
    )
    prefix_cache_mb: float = Field(
        default=64, ge=0, description="per model: prompt-prefix states kept across requests (0 = off)"
    )
    prefill_tokens_per_step: int = Field(default=4096, ge=1, description="prompt/text tokens fed per scheduler tick")
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op CPU threads (unset = torch's default; 1 suits a busy CPU)"
    )

    # Fill-in-the-blank and beam search.
    fill_pairs: str | None = Field(
        default=None,
        description="forward:backward model pairs for /v1/fill, comma-separated (NAME + NAME-backward pair by name)",
    )
    max_fill_candidates: int = Field(default=100, ge=1, description="candidates a /v1/fill call returns or rescores")
    max_fill_chars: int = Field(default=16, ge=1, description="longest span a char model's /v1/fill may fill")
    max_constraint_bytes: int = Field(
        default=65_536, ge=1, description="size of a regex, choice list, JSON schema or grammar a request may send"
    )
    constraint_compile_seconds: float = Field(
        default=2.0, gt=0, description="seconds a constraint may take to compile before it is refused"
    )
    constraint_cache_size: int = Field(default=256, ge=1, description="compiled constraints kept per model (LRU)")
    max_beam_width: int = Field(default=16, ge=1, description="largest beam_width of /v1/generate")

    # Sessions: their hidden state lives in Redis.
    redis_url: str | None = Field(default=None, description="Redis for sessions; unset = a private redis-server")
    redis_cluster: bool = Field(
        default=False, description="RNNLM_REDIS_URL names one node of a Redis Cluster (sessions spread by key)"
    )
    redis_dir: Path | None = Field(default=None, description="data dir of the private Redis (unset = temporary)")
    redis_timeout: float = Field(default=0.5, gt=0, description="seconds before a Redis call gives up (then 503)")
    session_ttl: float = Field(default=3600, gt=0, description="seconds of inactivity before a session expires")
    max_session_ttl: float = Field(default=86_400, gt=0, description="longest TTL a session may ask for")
    session_history_tokens: int = Field(
        default=128, ge=0, description="recent tokens a session keeps for the repetition penalty"
    )

    @model_validator(mode="after")
    def _cluster_needs_an_address(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("RNNLM_REDIS_CLUSTER=true needs RNNLM_REDIS_URL, the address of one cluster node")
        return self
