"""Fine-tune a LoRA adapter from chat examples with peft: what ``tenantgate adapters train`` runs.

The data is OpenAI's fine-tuning format (one ``{"messages": [{"role", "content"}, ...]}`` per line; an
assistant message may carry ``"weight": 0`` to be shown but not learned). Each conversation is rendered
with the base model's own chat template, the same text vLLM renders at inference, and only the
assistant's tokens (with their end-of-turn token) are learned: every other label is -100.

torch, transformers and peft come with the optional ``train`` dependency group and are imported only
inside the functions that train, so ``import adapters.training`` (and the CLI's ``--help``) work without
them. The output folder receives exactly ``adapter_config.json`` and ``adapter_model.safetensors``: peft's
README.md model card is not kept (the upload takes the two files; per-adapter tokenizer files are
deprecated in vLLM, so none are written).
"""

from __future__ import annotations

import importlib
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ROLES = ("system", "user", "assistant")
INSTALL_HINT = "pip install 'tenantgate[train]'"
MAX_REPORTED_ERRORS = 10
DEFAULT_BATCH_LIMIT = 16  # the default batch: every example while there are at most this many


class TrainingError(Exception):
    """A user-facing failure (bad data, options or base model; missing packages): ``message`` says what."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    learn: bool  # an assistant message the adapter learns (weight 1, the default)


@dataclass(frozen=True, slots=True)
class ChatExample:
    line: int  # 1-based line of the data file, for error messages
    messages: tuple[ChatMessage, ...]


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dropout: float = 0.0
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int | None = None  # None: all examples in one batch when few (DEFAULT_BATCH_LIMIT), else that many
    seed: int = 0
    max_length: int = 1024
    threads: int | None = None  # CPU threads; None: every core this process may use
    dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, else float32
    gradient_checkpointing: bool = False  # less activation memory for about a third more compute

    def check(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"--rank must be at least 1, not {self.rank}")
        if not self.alpha > 0:
            problems.append(f"--alpha must be positive, not {self.alpha}")
        if not self.target_modules or any(not m for m in self.target_modules):
            problems.append("--target-modules must name at least one module (e.g. q_proj,v_proj)")
        if not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1), not {self.dropout}")
        if self.epochs < 1:
            problems.append(f"--epochs must be at least 1, not {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"--lr must be a positive number, not {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.max_length < 8:
            problems.append(f"--max-length must be at least 8, not {self.max_length}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads must be at least 1, not {self.threads}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            problems.append(f"--dtype must be auto, float32 or bfloat16, not {self.dtype!r}")
        if problems:
            raise TrainingError("; ".join(problems))


# --- the data file -------------------------------------------------------------------------------------


def _clip(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_message(raw: Any, where: str) -> ChatMessage:
    if not isinstance(raw, dict):
        raise TrainingError(f"{where}: expected an object with role and content")
    role = raw.get("role")
    if role not in ROLES:
        raise TrainingError(f"{where}: unknown role {_clip(role)!r} (expected system, user or assistant)")
    content = raw.get("content")
    if not isinstance(content, str):
        raise TrainingError(f"{where}: content must be a string")
    weight = raw.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool) or (weight == 0 and role != "assistant"):
        raise TrainingError(f"{where}: weight must be 0 or 1, and only on an assistant message")
    return ChatMessage(role=role, content=content, learn=role == "assistant" and weight == 1)


def parse_example(line: bytes, number: int) -> ChatExample:
    """One line of the data file; TrainingError naming the line when it is not a usable conversation."""
    try:
        doc = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise TrainingError(f"line {number}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list) or not doc["messages"]:
        raise TrainingError(f'line {number}: expected an object with a non-empty "messages" list')
    messages = tuple(
        _parse_message(raw, f"line {number}, message {i}") for i, raw in enumerate(doc["messages"], start=1)
    )
    if messages[0].role == "assistant":
        raise TrainingError(f"line {number}: the conversation starts with the assistant (start with system or user)")
    if not any(m.learn for m in messages):
        raise TrainingError(f"line {number}: no assistant message to learn from")
    return ChatExample(line=number, messages=messages)


def load_chats(path: Path) -> list[ChatExample]:
    """Every conversation of a JSONL file (blank lines skipped). The errors of up to ten lines are reported
    together, each with its line number."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrainingError(f"--data {path}: no such file") from None
    except IsADirectoryError:
        raise TrainingError(f"--data {path}: is a folder, expected a .jsonl file") from None
    except OSError as exc:
        raise TrainingError(f"--data {path}: cannot read it ({exc.strerror})") from None
    examples: list[ChatExample] = []
    errors: list[str] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(parse_example(line, number))
        except TrainingError as exc:
            errors.append(exc.message)
    if errors:
        more = f"\n(and {len(errors) - MAX_REPORTED_ERRORS} more lines)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise TrainingError(f"--data {path}:\n" + "\n".join(errors[:MAX_REPORTED_ERRORS]) + more)
    if not examples:
        raise TrainingError(f"--data {path}: no examples (expected one JSON object per line)")
    return examples


# --- tokens and labels ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # -100 where nothing is learned


def _render(tokenizer: Any, messages: Sequence[ChatMessage], *, generation_prompt: bool) -> str:
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
    if not isinstance(text, str):
        raise TrainingError("the base model's chat template did not render text")
    return text


def encode_example(tokenizer: Any, example: ChatExample, max_length: int) -> EncodedExample:
    """The conversation rendered by the chat template, tokenized once; labels only on the character spans
    of the learned assistant turns (from the text after the generation prompt to the end of the turn)."""
    try:
        full = _render(tokenizer, example.messages, generation_prompt=False)
        spans = []
        for i, message in enumerate(example.messages):
            if not message.learn:
                continue
            before = _render(tokenizer, example.messages[:i], generation_prompt=True)
            through = _render(tokenizer, example.messages[: i + 1], generation_prompt=False)
            if not (full.startswith(before) and full.startswith(through) and len(before) < len(through)):
                raise TrainingError(
                    f"line {example.line}: the base model's chat template does not render a conversation's "
                    "earlier turns as a prefix of it, so the assistant's tokens cannot be told apart"
                )
            spans.append((len(before), len(through)))
    except TrainingError:
        raise
    except Exception as exc:  # jinja raises anything: the template's own checks (e.g. role order)
        raise TrainingError(f"line {example.line}: the chat template refused it ({_clip(exc, 200)})") from None
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    if len(ids) > max_length:
        raise TrainingError(f"line {example.line}: {len(ids)} tokens, more than --max-length {max_length}")
    labels = [
        token if any(start <= begin < end for start, end in spans) else -100
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    if all(label == -100 for label in labels[1:]):
        raise TrainingError(f"line {example.line}: no assistant token left to learn")
    return EncodedExample(input_ids=ids, labels=labels)


# --- training ------------------------------------------------------------------------------------------


def _training_stack() -> SimpleNamespace:
    """torch, transformers and peft, or a TrainingError saying how to install them."""
    modules = {}
    for name in ("torch", "transformers", "peft", "tqdm"):
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as exc:
            raise TrainingError(
                f"training needs torch, transformers and peft ({exc.name or name} is missing): {INSTALL_HINT}"
            ) from None
    return SimpleNamespace(**modules)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        extra = sorted(p.name for p in out.iterdir() if p.name not in ADAPTER_FILES)
        if extra:
            raise TrainingError(f"--out {out}: holds other files ({_clip(', '.join(extra))}); use an empty folder")


def _batches(encoded: list[EncodedExample], batch_size: int, rng: random.Random) -> list[list[EncodedExample]]:
    order = list(range(len(encoded)))
    rng.shuffle(order)
    return [[encoded[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]


def _collate(torch: Any, batch: list[EncodedExample], pad_id: int, device: Any) -> dict[str, Any]:
    """Right-padded tensors; padding is masked out of attention and labels."""
    width = max(len(e.input_ids) for e in batch)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in batch]
    labels = [e.labels + [-100] * (width - len(e.labels)) for e in batch]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _device_and_dtype(torch: Any, dtype: str) -> tuple[Any, Any]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    return device, getattr(torch, dtype)


def _load_tokenizer(transformers: Any, base_model: str) -> Any:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"--base-model {_clip(base_model)}: cannot load its tokenizer ({_clip(exc, 300)})"
        ) from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise TrainingError(f"--base-model {_clip(base_model)}: its tokenizer has no chat template")
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError(f"--base-model {_clip(base_model)}: training needs a fast (tokenizers) tokenizer")
    return tokenizer


def _load_model(transformers: Any, base_model: str, dtype: Any, device: Any) -> Any:
    # On a GPU the weights go there directly (accelerate's device_map), not through host memory first.
    placement = {"device_map": {"": device.index or 0}} if device.type == "cuda" else {}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, **placement)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"--base-model {_clip(base_model)}: cannot load it ({_clip(exc, 300)})") from None
    model.config.use_cache = False
    return model.to(device)


def _lora_model(stack: SimpleNamespace, model: Any, options: TrainingOptions) -> Any:
    """The model wrapped by peft; every target module must exist (peft alone is content with one)."""
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, stack.torch.nn.Linear)})
    missing = [m for m in options.target_modules if m not in linear]
    if missing:
        raise TrainingError(
            f"--target-modules: the base model has no {_clip(', '.join(missing))} (its linear layers: "
            f"{_clip(', '.join(linear), 300)})"
        )
    peft = stack.peft
    config = peft.LoraConfig(
        r=options.rank,
        lora_alpha=int(options.alpha) if float(options.alpha).is_integer() else options.alpha,  # 16, not 16.0
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingError(f"--target-modules: {_clip(exc, 300)}") from None
    if options.gradient_checkpointing:  # recompute activations in the backward pass: long examples, big models
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return wrapped


def _save(model: Any, out: Path) -> None:
    """Save into a scratch folder beside ``out``, then move exactly the two adapter files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out.parent))
    try:
        model.save_pretrained(str(scratch), safe_serialization=True, save_embedding_layers=False)
        for name in ADAPTER_FILES:
            if not (scratch / name).is_file():
                raise TrainingError(f"peft wrote no {name}")
        for name in ADAPTER_FILES:
            (scratch / name).chmod(0o644)  # safetensors writes 0600; the upload or a shared volume wants 0644
            os.replace(scratch / name, out / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _epochs(
    stack: SimpleNamespace, model: Any, encoded: list[EncodedExample], pad_id: int, options: TrainingOptions,
    *, log: Callable[[str], None], progress_bar: bool,
) -> list[float]:
    """The training loop (AdamW, constant learning rate, gradients clipped at 1): the mean loss per epoch."""
    torch = stack.torch
    device = next(model.parameters()).device
    batch_size = options.batch_size or min(len(encoded), DEFAULT_BATCH_LIMIT)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr)
    rng = random.Random(options.seed)  # noqa: S311  # shuffling, not secrets
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    log(
        f"training a rank-{options.rank} LoRA on {len(encoded)} examples ({sum(len(e.input_ids) for e in encoded)} "
        f"tokens) for {options.epochs} epochs of {steps_per_epoch} steps on {device.type} "
        f"({sum(p.numel() for p in trainable):,} trainable parameters)"
    )
    bar = stack.tqdm.tqdm(total=options.epochs * steps_per_epoch, unit="step", disable=not progress_bar)
    say = bar.write if progress_bar else log
    losses: list[float] = []
    model.train()
    try:
        for epoch in range(1, options.epochs + 1):
            total, tokens = 0.0, 0
            for batch in _batches(encoded, batch_size, rng):
                inputs = _collate(torch, batch, pad_id, device)
                loss = model(**inputs).loss
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(f"epoch {epoch}: the loss is {value}; try a lower --lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                learned = int((inputs["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
                total += value * learned
                tokens += learned
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            losses.append(total / tokens)
            say(f"epoch {epoch}/{options.epochs}: mean loss {losses[-1]:.4f}")
    finally:
        bar.close()
    return losses


def train_adapter(
    base_model: str | Path,
    data: Path,
    out: Path,
    options: TrainingOptions | None = None,
    *,
    log: Callable[[str], None] = print,
    progress_bar: bool = True,
) -> list[float]:
    """Train a LoRA adapter on ``data`` for ``base_model`` (a folder or a Hugging Face name) into ``out``;
    return the mean loss (per learned token) of each epoch. Deterministic for a given seed on one machine."""
    options = options or TrainingOptions()
    options.check()
    examples = load_chats(data)  # bad data fails before the slow imports and the model load
    _check_out(out)
    stack = _training_stack()
    torch = stack.torch
    device, dtype = _device_and_dtype(torch, options.dtype)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(options.threads or len(os.sched_getaffinity(0)))
    try:
        torch.manual_seed(options.seed)
        tokenizer = _load_tokenizer(stack.transformers, str(base_model))
        encoded = [encode_example(tokenizer, example, options.max_length) for example in examples]
        model = _lora_model(stack, _load_model(stack.transformers, str(base_model), dtype, device), options)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        losses = _epochs(stack, model, encoded, pad_id, options, log=log, progress_bar=progress_bar)
        _save(model, out)
    finally:
        torch.set_num_threads(threads)  # a process-wide setting: leave it as found
    log(f"saved {', '.join(ADAPTER_FILES)} in {out}")
    return losses
