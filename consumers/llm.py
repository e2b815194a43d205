"""The LLM provider layer shared by the classify and draft-reply steps.

`OpenAICompatibleProvider` calls any OpenAI-compatible chat-completions endpoint
with the real `openai` client and a strict JSON-schema structured output built
from the step's pydantic model. `OfflineProvider` answers with the demo rules of
`consumers.offline` when no endpoint is configured. `call_llm` wraps one call:
rate limit, the call, timing, then validation of the raw output, and returns an
`LlmCall` record (provider, model, prompt, raw output, tokens, latency) so the
result event carries everything replay needs and never calls the model again.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, cast

import openai
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from consumers.offline import OFFLINE_MODEL, offline_classification, offline_draft
from consumers.rate_limit import RateLimiter
from customer_email.events import ClassifyEmailPayload, DraftReplyPayload
from pm import telemetry
from pm.config import Config
from pm.events import Event, LlmCall, StepFailed
from pm.steps.handler import PermanentError, TransientError, failed_result

__all__ = [
    "OPENAI_COMPATIBLE",
    "OFFLINE",
    "INVALID_OUTPUT_REASON",
    "Message",
    "LlmRequest",
    "LlmResponse",
    "LlmProvider",
    "LlmOutcome",
    "OpenAICompatibleProvider",
    "OfflineProvider",
    "choose_provider",
    "llm_dependencies",
    "strict_json_schema",
    "call_llm",
    "invalid_output_result",
]

log = logging.getLogger(__name__)

OPENAI_COMPATIBLE = "openai-compatible"
OFFLINE = "offline"
INVALID_OUTPUT_REASON = "model output failed validation"

T = TypeVar("T", bound=BaseModel)
Message = dict[str, str]  # one chat message: {"role": ..., "content": ...}


@dataclass(frozen=True)
class LlmRequest(Generic[T]):
    """One structured-output call: the messages, the model the output must validate against, and context.

    `context` is the command payload; only the offline provider reads it (a model reads the messages).
    `completion_tokens` is the expected output size, used for the tokens/min estimate.
    """

    name: str  # JSON-schema name sent to the endpoint, e.g. "email_classification"
    messages: list[Message]
    output: type[T]
    context: ClassifyEmailPayload | DraftReplyPayload
    completion_tokens: int = 256


@dataclass(frozen=True)
class LlmResponse:
    provider: str
    model: str
    raw_output: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusal: str | None = None


class LlmProvider(Protocol):
    name: str
    model: str

    def complete(self, request: LlmRequest[Any]) -> LlmResponse:
        """Return the raw model output; raise TransientError (retry) or PermanentError (give up)."""
        ...


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI's `strict: true` structured outputs accept.

    Strict mode wants every object closed (`additionalProperties: false`) with every
    property listed in `required` (optional fields are expressed as `anyOf [..., null]`,
    which pydantic already emits) and no `default` keywords.
    """
    return _strictify(copy.deepcopy(model.model_json_schema()))


def _strictify(node: Any) -> Any:
    if isinstance(node, list):
        return [_strictify(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "default":
            continue
        if key in ("properties", "$defs"):  # maps of names to schemas: keep every name
            out[key] = {name: _strictify(sub) for name, sub in value.items()}
        else:
            out[key] = _strictify(value)
    if out.get("type") == "object" or "properties" in out:
        out["additionalProperties"] = False
        out["required"] = list(out.get("properties", {}))
    return out


# HTTP statuses worth retrying (the openai client's own retry set): timeout, conflict, rate limit, 5xx.
_TRANSIENT_STATUS = {408, 409, 429}


class OpenAICompatibleProvider:
    """Chat completions with a strict JSON-schema response format, via the official `openai` client.

    The client's own retries are off (`max_retries=0`): the step-consumer base owns
    retrying, with backoff and a budget, so a failure is visible and counted once.
    """

    name = OPENAI_COMPATIBLE

    def __init__(self, config: Config, *, timeout: float = 60.0, model: str | None = None) -> None:
        if not config.llm_base_url:
            raise ValueError("OpenAICompatibleProvider needs config.llm_base_url")
        self.model = model or config.llm_model
        self.base_url = config.llm_base_url
        self._client = openai.OpenAI(
            base_url=config.llm_base_url,
            api_key=config.openai_api_key or "unused",  # local servers accept any key
            timeout=timeout,
            max_retries=0,
        )

    def complete(self, request: LlmRequest[Any]) -> LlmResponse:
        response_format: ResponseFormatJSONSchema = {
            "type": "json_schema",
            "json_schema": {
                "name": request.name,
                "schema": strict_json_schema(request.output),
                "strict": True,
            },
        }
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=cast(list[ChatCompletionMessageParam], request.messages),
                response_format=response_format,
            )
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise TransientError(f"LLM endpoint {self.base_url} unreachable: {exc}") from exc
        except openai.APIStatusError as exc:
            detail = f"LLM endpoint answered HTTP {exc.status_code}: {exc.message}"
            if exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500:
                raise TransientError(detail) from exc
            raise PermanentError(detail) from exc
        except openai.APIError as exc:  # e.g. a response body the client cannot parse
            raise PermanentError(f"LLM endpoint returned an unusable response: {exc}") from exc
        if not response.choices:
            raise PermanentError("LLM endpoint returned no choices")
        message = response.choices[0].message
        usage = response.usage
        return LlmResponse(
            provider=self.name,
            model=response.model or self.model,
            raw_output=message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            refusal=getattr(message, "refusal", None),
        )


class OfflineProvider:
    """FOR THE DEMO ONLY: the keyword/template rules of `consumers.offline`, no model, no network.

    Chosen only when no endpoint is configured. Every result it produces says
    provider `offline`. `latency_ms` adds an artificial delay per call so
    benchmarks can model a slow endpoint without one. Token counts are 0: nothing
    was sent anywhere.
    """

    name = OFFLINE
    model = OFFLINE_MODEL

    def __init__(self, *, latency_ms: int = 0) -> None:
        self.latency_ms = max(0, latency_ms)

    def complete(self, request: LlmRequest[Any]) -> LlmResponse:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        context = request.context
        if isinstance(context, ClassifyEmailPayload):
            output: BaseModel = offline_classification(context.email)
        elif isinstance(context, DraftReplyPayload):
            output = offline_draft(context)
        else:  # pragma: no cover - the handlers only pass these two
            raise PermanentError(f"offline provider has no rules for {type(context).__name__}")
        return LlmResponse(provider=self.name, model=self.model, raw_output=output.model_dump_json())


def choose_provider(config: Config, *, latency_ms: int = 0, timeout: float = 60.0) -> LlmProvider:
    """The real endpoint whenever `llm_base_url` is set; the offline demo rules only when it is empty."""
    if config.llm_base_url.strip():
        return OpenAICompatibleProvider(config, timeout=timeout)
    log.warning(
        "no LLM endpoint configured (PM_LLM_BASE_URL): using the offline demo rules, provider=offline"
    )
    return OfflineProvider(latency_ms=latency_ms)


def llm_dependencies(
    config: Config,
    *,
    rpm: float | None,
    tpm: float | None,
    llm_latency_ms: int,
    timeout: float,
    provider: LlmProvider | None,
) -> tuple[LlmProvider, RateLimiter | None]:
    """What an LLM step handler needs: its provider (given, else chosen) and a limiter when rpm/tpm are set."""
    chosen = provider or choose_provider(config, latency_ms=llm_latency_ms, timeout=timeout)
    return chosen, (RateLimiter(rpm=rpm, tpm=tpm) if (rpm or tpm) else None)


@dataclass(frozen=True)
class LlmOutcome(Generic[T]):
    """One call's record, and either the validated output or the validation errors."""

    call: LlmCall
    value: T | None
    errors: list[str] = field(default_factory=list)


def _estimate_tokens(prompt: str, completion_tokens: int) -> int:
    # ~4 characters per token is the usual rough rule; settled against the real usage afterwards.
    return len(prompt) // 4 + completion_tokens


def _format_errors(exc: ValidationError) -> list[str]:
    errors = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(output)"
        errors.append(f"{where}: {error['msg']}")
    return errors


def call_llm(provider: LlmProvider, limiter: RateLimiter | None, request: LlmRequest[T]) -> LlmOutcome[T]:
    """Rate-limit, call, time and validate. Transport errors propagate (TransientError/PermanentError)."""
    prompt = json.dumps(request.messages, ensure_ascii=False)
    estimate = _estimate_tokens(prompt, request.completion_tokens)
    if limiter is not None:
        limiter.acquire(estimate)
    # A GenAI client span (child of the step's span); attributes never include the prompt or output.
    with telemetry.span(
        f"chat {provider.model}",
        lambda: {telemetry.GEN_AI_OPERATION_NAME: "chat", telemetry.GEN_AI_REQUEST_MODEL: provider.model},
        kind=SpanKind.CLIENT,
    ) as span:
        started = time.perf_counter()
        # A failed call keeps its token estimate in the bucket: it may well have been counted upstream.
        response = provider.complete(request)
        latency_ms = int((time.perf_counter() - started) * 1000)
        call = LlmCall(
            provider=response.provider,
            model=response.model,
            prompt=prompt,
            raw_output=response.raw_output,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            latency_ms=latency_ms,
        )
        if span is not None and span.is_recording():
            span.set_attributes(telemetry.llm_attributes(call))
            span.set_attribute(telemetry.GEN_AI_RESPONSE_MODEL, response.model)
    if limiter is not None:
        limiter.settle(estimate, response.prompt_tokens + response.completion_tokens)
    try:
        value = request.output.model_validate_json(response.raw_output)
    except ValidationError as exc:
        errors = _format_errors(exc)
        if response.refusal:
            errors.insert(0, f"model refused: {response.refusal}")
        return LlmOutcome(call=call, value=None, errors=errors)
    return LlmOutcome(call=call, value=value)


def invalid_output_result(command: Event, step: str, now: datetime, outcome: LlmOutcome[Any]) -> StepFailed:
    """A non-retryable failed result that carries the validation errors and the call record."""
    return failed_result(
        command,
        step,
        now,
        reason=INVALID_OUTPUT_REASON,
        retryable=False,
        errors=outcome.errors,
        llm=outcome.call,
    )
