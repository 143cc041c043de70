"""The training run: truncated BPTT over batchified streams, validation, checkpoints, resume."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.network import RNNLM, State, detach_state, select_state, state_from_tensors, state_tensors
from model.precision import bf16_supported
from model.tokenizer import Tokenizer
from model.tokenizers import tokenizer_from_dict
from training import distributed as dist_util
from training.batching import batchify, num_windows, shard_streams, windows
from training.config import TrainConfig
from training.data import Corpus, CorpusSource
from training.distributed import DistributedContext
from training.encoding import build_tokenizer_from
from training.file_corpus import open_corpus
from training.metrics import MetricsLog, plot_curves, quality
from training.resume import (
    Progress,
    ResumeError,
    ResumeState,
    capture_python_rng,
    load_resume_state,
    restore_python_rng,
)
from training.resume import save_resume_state as write_resume_state
from training.schedule import LRSchedule
from training.token_cache import encoded_corpus


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged)."""


@dataclass
class RunResult:
    """What a finished (or budget-stopped) run reports."""

    out: Path
    progress: Progress
    figures: dict[str, Any]  # the `training` section written into config.json


def build_tokenizer(config: TrainConfig, train_text: str) -> Tokenizer:
    """Vocabulary from the train split only (PTB train gives 10,000 words with <eos>)."""
    return build_tokenizer_from(config, Corpus("text", train_text, "", "", {}, ""))


def make_optimizer(config: TrainConfig, model: RNNLM) -> torch.optim.Optimizer:
    # foreach: one fused kernel per update instead of a loop over parameters.
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, foreach=True
    )


def resolve_precision(setting: str, device: torch.device) -> str:
    """The precision a run computes in: `auto` is bf16 where the device has it natively."""
    if setting == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return setting


def carry(state: State) -> State:
    """The state handed to the next window: detached (truncated BPTT) and float32 whatever the
    autocast computed it in, so that precision never compounds across windows and a resume
    state has one format."""
    state = detach_state(state)
    if isinstance(state, tuple):
        return (state[0].float(), state[1].float())
    return state.float()


class Trainer:
    """One training run. Call `run()`; everything it writes goes under `config.out` (rank 0)."""

    def __init__(
        self,
        config: TrainConfig,
        context: DistributedContext | None = None,
        resume_from: Path | None = None,
        corpus: Corpus | None = None,
    ) -> None:
        self.config = config
        self.context = context or DistributedContext()
        self.device = torch.device(config.device)
        self.out = Path(config.out)
        self.precision = resolve_precision(config.precision, self.device)
        # The clock of the budget, the schedule and `elapsed`: CPU time is the work done whatever the load.
        self.clock = time.process_time if config.budget_clock == "cpu" else time.perf_counter
        dist_util.init_process_group(self.context, self.device)

        resumed = load_resume_state(resume_from) if resume_from is not None else None
        # A corpus handed over as text is encoded in memory; one named by the config is
        # encoded once into token files under cache_dir, and memory-mapped from then on.
        self.corpus: CorpusSource = corpus or open_corpus(config.data, config.data_dir, config.cache_dir, config.split)
        # On resume the vocabulary must be the one the resumed weights were trained with.
        known = tokenizer_from_dict(resumed.config["tokenizer"]) if resumed is not None else None
        cache = None if corpus is not None else Path(config.cache_dir).expanduser()
        self.encoded = encoded_corpus(config, self.corpus, known, cache, self.context)
        self.tokenizer = self.encoded.tokenizer
        # Characters per token and unknown tokens of each split: every level's bits per character.
        self.split_stats = {split: part.stats for split, part in self.encoded.splits.items()}
        rank, world = self.context.rank, self.context.world_size
        for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
            if size % world:
                raise ValueError(f"{name} {size} is not divisible by the {world} ranks")
        stream = self.encoded.stream
        self.train_data = shard_streams(batchify(stream("train", config.direction), config.batch_size), rank, world)
        self.eval_data = {
            split: shard_streams(batchify(stream(split, config.direction), config.eval_batch_size), rank, world)
            for split in ("valid", "test")
        }
        self.steps_per_epoch = num_windows(self.train_data, config.bptt)

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.model = RNNLM(config.model_config(self.tokenizer.vocab_size)).to(self.device)
        if self.context.enabled:
            torch.manual_seed(config.seed + rank)  # each rank its own dropout masks
        self.optimizer = make_optimizer(config, self.model)
        self.schedule = LRSchedule(
            kind=config.schedule,
            peak=config.lr,
            min_lr=config.min_lr,
            decay=config.lr_decay,
            warmup_steps=config.warmup_steps,
            total_steps=config.epochs * self.steps_per_epoch,  # max_steps only interrupts, as a resume point
            budget_seconds=config.max_minutes * 60,
        )
        self.progress = Progress()
        self.eval_seconds_per_token = 0.0  # measured by each evaluation
        self.train_seconds_per_token = 0.0  # per token of this rank, measured at each log point
        self.hidden: State = self.model.init_state(self.train_data.shape[0])
        if resumed is not None:
            self.restore(resumed)
        self.network: torch.nn.Module = self.model
        if self.context.enabled:
            device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=device_ids)
        keep = self.progress.step if resumed is not None else None
        self.metrics = MetricsLog(self.out, enabled=self.context.is_main, keep_after_step=keep)

    # ----------------------------------------------------------------- resume

    def restore(self, state: ResumeState) -> None:
        try:
            self.model.load_state_dict(state.model)
            self.optimizer.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(
                f"{self.out}: the saved state does not fit this config (changed model flags?): {exc}"
            ) from exc
        # The horizon follows the new config (a resumed run may be given more epochs or minutes).
        horizon = {"total_steps": self.schedule.total_steps, "budget_seconds": self.schedule.budget_seconds}
        self.schedule = LRSchedule.from_state_dict({**state.schedule, **horizon})
        self.progress = state.progress
        full = [t.to(self.device) for t in state.hidden]  # (layers, B, hidden): every rank's streams
        share = self.train_data.shape[0]
        rows = slice(self.context.rank * share, (self.context.rank + 1) * share)
        self.hidden = select_state(state_from_tensors(full), rows)
        if len(state.torch_rng) == self.context.world_size:
            torch.set_rng_state(state.torch_rng[self.context.rank])
        if len(state.cuda_rng) == self.context.world_size and self.device.type == "cuda":
            torch.cuda.set_rng_state(state.cuda_rng[self.context.rank], self.device)
        if state.python_rng is not None:
            restore_python_rng(state.python_rng)

    def save_resume_state(self) -> None:
        hidden = [dist_util.gather_rows(t, self.context) for t in state_tensors(self.hidden)]
        rng = dist_util.gather_bytes(torch.get_rng_state(), self.context)
        cuda_rng = []
        if self.device.type == "cuda":
            cuda_rng = dist_util.gather_bytes(torch.cuda.get_rng_state(self.device), self.context)
        if not self.context.is_main:
            return
        write_resume_state(
            self.out,
            ResumeState(
                config={**self.config.to_dict(), "tokenizer": self.tokenizer.to_dict()},
                progress=self.progress,
                schedule=self.schedule.state_dict(),
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                hidden=hidden,
                torch_rng=rng,
                cuda_rng=cuda_rng,
                python_rng=capture_python_rng(),
            ),
        )

    # ------------------------------------------------------------- evaluation

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 matmuls with float32 master weights; callers take the logits to float32 for the loss."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, model: RNNLM, data: Tensor | np.ndarray) -> float:
        """Mean loss in nats per token over a whole split (all ranks' streams)."""
        was_training = model.training
        model.eval()
        started = self.clock()
        hidden = model.init_state(data.shape[0])
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for _, inputs, targets in windows(data, self.config.bptt, device=self.device):
            with self.autocast():
                logits, hidden = model(inputs, hidden)  # (B, T, V)
            hidden = carry(hidden)
            total += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        model.train(was_training)
        count = data.shape[0] * (data.shape[1] - 1)
        loss_sum, token_count = dist_util.all_reduce_sum([float(total), float(count)], self.context, self.device)
        self.eval_seconds_per_token = (self.clock() - started) / max(count, 1)
        return loss_sum / max(token_count, 1.0)

    def validate(self, scheduled: bool) -> bool:
        """Validate; keep the checkpoint if best. Scheduled validations drive the plateau
        schedule and early stopping; returns True when training should stop early."""
        loss = self.evaluate(self.model, self.eval_data["valid"])
        self.progress.elapsed = self.elapsed()
        self.progress.last_validation_step = self.progress.step
        figures = quality(loss, self.config.level, self.split_stats["valid"])
        record = {
            "step": self.progress.step,
            "epoch": self.epoch_float(),
            "tokens_seen": self.progress.tokens_seen,
            "elapsed": round(self.progress.elapsed, 2),
            **figures,
        }
        if not math.isfinite(loss):
            raise TrainingError(
                f"validation loss is {loss} at step {self.progress.step}: training diverged (lower lr?)"
            )
        self.progress.history.append(record)
        self.metrics.write("valid", **record)
        if loss < self.progress.best_val_loss:
            self.progress.best_val_loss, self.progress.best_step = loss, self.progress.step
            if self.context.is_main:
                save_checkpoint(
                    self.out, self.model, self.tokenizer, training=self.figures(), direction=self.config.direction
                )
        stop = False
        if scheduled:
            self.schedule.on_validation(loss)
            stop = self.config.patience > 0 and self.schedule.stale >= self.config.patience
        self.save_resume_state()
        return stop

    # --------------------------------------------------------------- training

    def epoch_float(self) -> float:
        return round(self.progress.epoch + self.progress.window / max(1, self.steps_per_epoch), 4)

    def elapsed(self) -> float:
        """Seconds of training so far on the budget's clock (validations included), across resumes."""
        return self.elapsed_before + self.clock() - self.run_started

    def closing_seconds(self) -> float:
        """Predicted time of the closing validation and test, so that a budgeted run ends on time."""
        tokens = sum(d.shape[0] * (d.shape[1] - 1) for d in self.eval_data.values())
        # Before the first validation: a forward pass costs about a third of a training step.
        rate = self.eval_seconds_per_token or self.train_seconds_per_token / 3
        return float(tokens * rate)

    def out_of_budget(self) -> bool:
        """Past the wall-clock budget (less the closing evaluation); also moves the cosine horizon."""
        budget = self.config.max_minutes * 60
        if budget <= 0:
            return False
        training_budget = max(budget - self.closing_seconds(), 1.0)
        self.schedule.budget_seconds = training_budget
        return dist_util.any_rank(self.elapsed() >= training_budget, self.context, self.device)

    def run(self) -> RunResult:
        """Train until the epochs, max_steps, budget or patience run out; then test the best."""
        config, progress = self.config, self.progress
        self.run_started, self.elapsed_before = self.clock(), progress.elapsed
        self.model.train()
        stop = bool(config.max_steps and progress.step >= config.max_steps)
        vocab_size = self.tokenizer.vocab_size
        while progress.epoch < config.epochs and not stop:
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=progress.window,
                desc=f"epoch {progress.epoch + 1}/{config.epochs}",
                disable=not (config.progress and self.context.is_main),
                dynamic_ncols=True,
            )
            interval_start, interval_cpu = time.perf_counter(), time.process_time()
            interval_tokens = interval_steps = 0
            loss_sum = torch.zeros((), device=self.device)
            for index, inputs, targets in windows(self.train_data, config.bptt, progress.window, self.device):
                with self.autocast():
                    logits, hidden = self.network(inputs, self.hidden)  # (B, T, V)
                self.hidden = carry(hidden)  # truncated BPTT: no gradient past the window
                loss = F.cross_entropy(logits.float().view(-1, vocab_size), targets.reshape(-1))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                if config.clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip, foreach=True)
                lr = self.schedule.lr(progress.step, self.elapsed())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                loss_sum += loss.detach()  # no .item() per step: on a GPU it would wait for every step
                progress.step += 1
                progress.window = index + 1
                tokens = inputs.numel() * self.context.world_size
                progress.tokens_seen += tokens
                interval_tokens += tokens
                interval_steps += 1

                stop = bool(config.max_steps and progress.step >= config.max_steps)
                if not self.context.enabled:  # alone, every step; in DDP only at log points (a collective)
                    stop = stop or self.out_of_budget()
                if interval_steps == config.log_every or stop:
                    now, cpu_now = time.perf_counter(), time.process_time()
                    speed = interval_tokens / (now - interval_start)
                    cpu_speed = interval_tokens / max(cpu_now - interval_cpu, 1e-9)
                    seconds = cpu_now - interval_cpu if self.config.budget_clock == "cpu" else now - interval_start
                    self.train_seconds_per_token = seconds / interval_tokens * self.context.world_size
                    self.log_train(bar, float(loss_sum) / interval_steps, speed, cpu_speed, lr)
                    bar.update(interval_steps)
                    loss_sum.zero_()
                    interval_start, interval_cpu, interval_tokens, interval_steps = now, cpu_now, 0, 0
                    if self.context.enabled:
                        stop = stop or self.out_of_budget()
                if config.eval_every and progress.step % config.eval_every == 0 and not stop:
                    stop = self.validate(scheduled=True)
                    interval_start, interval_cpu = time.perf_counter(), time.process_time()  # training only
                if stop:
                    break
            bar.close()
            if not stop:  # a whole epoch done
                progress.epoch += 1
                progress.window = 0
                self.hidden = self.model.init_state(self.train_data.shape[0])
                if progress.last_validation_step != progress.step:  # not just done by eval_every
                    stop = self.validate(scheduled=True)
                stop = stop or self.out_of_budget()
        return self.finish()

    def log_train(self, bar: tqdm[Any], mean_loss: float, speed: float, cpu_speed: float, lr: float) -> None:
        """Progress bar and metrics line; tokens per CPU-second is the figure that survives a busy machine."""
        figures = quality(mean_loss, self.config.level, self.split_stats["train"])
        shown = f"ppl {figures['ppl']:.1f}" if self.config.level == "word" else f"bpc {figures['bpc']:.3f}"
        postfix = f"loss {mean_loss:.3f} {shown} {speed:,.0f} tok/s lr {lr:.3g} {self.precision}"
        bar.set_postfix_str(postfix, refresh=False)
        self.metrics.write(
            "train",
            step=self.progress.step,
            epoch=self.epoch_float(),
            tokens_seen=self.progress.tokens_seen,
            elapsed=round(self.elapsed(), 2),
            lr=lr,
            tokens_per_s=round(speed, 1),
            tokens_per_cpu_s=round(cpu_speed, 1),
            **figures,
        )

    def finish(self) -> RunResult:
        """Validate the last weights if not just done, test the best checkpoint, write the figures."""
        self.progress.elapsed = self.elapsed()
        if self.progress.last_validation_step != self.progress.step:
            self.validate(scheduled=False)
        else:
            self.save_resume_state()
        best = load_checkpoint(self.out, device=self.device) if self.context.is_main else None
        test_model = best.model if best is not None else self.model
        if self.context.enabled:  # every rank tests the best weights: broadcast them from rank 0
            for tensor in test_model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        test_loss = self.evaluate(test_model, self.eval_data["test"])
        self.progress.elapsed = self.elapsed()  # the figures' elapsed_seconds include the closing evaluation
        figures = self.figures(test_loss)
        if self.context.is_main:
            save_checkpoint(self.out, test_model, self.tokenizer, training=figures, direction=self.config.direction)
            plot_curves(self.out, self.config.level)
            test_figures = quality(test_loss, self.config.level, self.split_stats["test"])
            self.metrics.write("test", step=self.progress.best_step, **test_figures)
        return RunResult(out=self.out, progress=self.progress, figures=figures)

    def figures(self, test_loss: float | None = None) -> dict[str, Any]:
        """The `training` section of config.json."""
        config, progress = self.config, self.progress
        best = next((r for r in progress.history if r["step"] == progress.best_step), None)
        val_loss = progress.best_val_loss
        data: dict[str, Any] = {
            "recipe": config.recipe,
            "corpus": self.corpus.name,
            "corpus_sha256": self.corpus.sha256,
            "split_rule": self.corpus.split_rule,
            "token_files": str(self.encoded.directory) if self.encoded.directory is not None else None,
            # What one evaluation pass scores (eval_lines caps valid and test; it is in "config" too).
            "eval_tokens": {split: self.split_stats[split].tokens for split in ("valid", "test")},
            "level": config.level,
            "direction": config.direction,
            "steps": progress.step,
            "best_step": progress.best_step,
            "epochs": self.epoch_float(),
            "best_epoch": best["epoch"] if best else None,
            "tokens_seen": progress.tokens_seen,
            "elapsed_seconds": round(progress.elapsed, 1),
            "val_loss_nats": val_loss if math.isfinite(val_loss) else None,
            "val_ppl": quality(val_loss, config.level)["ppl"] if math.isfinite(val_loss) else None,
            "world_size": self.context.world_size,
            "device": self.device.type,
            "precision": self.precision,
            "config": config.to_dict(),
        }
        if self.device.type == "cuda":  # what the run needed of the GPU (bench/gpu_check.py reports it)
            data["gpu_memory_peak_bytes"] = torch.cuda.max_memory_allocated(self.device)
        valid, test = self.split_stats["valid"], self.split_stats["test"]
        if math.isfinite(val_loss):
            data["val_bpc"] = quality(val_loss, config.level, valid)["bpc"]
        data["val_tokens_per_char"] = round(valid.tokens_per_char, 4)
        data["val_unknown_rate"] = round(valid.unknown_rate, 5)
        if test_loss is not None:
            data["test_loss_nats"] = test_loss
            data["test_ppl"] = quality(test_loss, config.level, test)["ppl"]
            data["test_bpc"] = quality(test_loss, config.level, test)["bpc"]
            data["test_unknown_rate"] = round(test.unknown_rate, 5)
        return data


def train(
    config: TrainConfig,
    context: DistributedContext | None = None,
    resume_from: Path | None = None,
    corpus: Corpus | None = None,
) -> RunResult:
    """Build a Trainer and run it."""
    return Trainer(config, context=context, resume_from=resume_from, corpus=corpus).run()
