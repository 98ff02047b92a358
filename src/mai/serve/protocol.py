"""OpenAI API request and response models, field names verbatim; our extras are marked as such.

Every field we read is validated here, so a bad value is a 400 naming the parameter, and so is a
value of the wrong JSON type: pydantic's lax mode would take "false" or "yes" as a boolean (a
gateway in front that tests the raw value's truth then disagrees with us about `stream`), and "5"
or 5.0 as an integer. Unknown fields are ignored, as vLLM does, so that clients written for
OpenAI's API work unmodified; but the OpenAI options we do not implement that would change the
answer (penalties, JSON response formats, tools, non-text content parts) are refused unless they
ask for nothing, so a client never believes a setting took effect when it did not.
"""

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator


def lone_surrogate(value, where: str) -> str | None:
    """Where in a JSON value (`where` names it) a string holds a lone UTF-16 surrogate, or None.

    JSON may escape one ("\\ud800") and Python decodes it into a str that UTF-8 cannot encode: the
    tokenizer, and any client sending the request on, would fail on it.
    """
    if isinstance(value, str):
        return None if escape_surrogates(value) == value else where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        name = escape_surrogates(str(key))  # a key that is not text is named with its surrogate escaped
        inner = f"{where}.{name}" if where else name
        found = inner if name != str(key) else lone_surrogate(item, inner)
        if found:
            return found
    return None


def escape_surrogates(text: str) -> str:
    return text.encode(errors="backslashreplace").decode()


def not_text(where: str) -> str:
    return f"{where} holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send valid Unicode"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _check_text(cls, value, info):
        where = lone_surrogate(value, info.field_name)
        if where:
            raise ValueError(not_text(where))
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_not_given(cls, value, info):
        """OpenAI's API reads null as a field not sent, and clients send it so: a field that has no
        meaning for None (`stream`, `temperature`) takes its default; one that has keeps None
        (a completion's `max_tokens`: as many as fit, as vLLM reads it)."""
        field = cls.model_fields[info.field_name]
        if value is None and not field.is_required() and type(None) not in get_args(field.annotation):
            return field.get_default(call_default_factory=True)
        return value


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingFields(OpenAIModel):
    """Fields the completions and chat requests share."""

    model: str = Field(description="A model id from GET /v1/models.")
    max_tokens: int | None = Field(None, ge=0, description="Most tokens to generate; default fills the context.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="Ours (as vLLM): keep the k most likely tokens; 0 or -1 disables.")
    n: int = Field(1, ge=1, le=16, description="Choices to generate per prompt.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the text (not included).")
    seed: int | None = Field(
        None, ge=-(2**63), le=2**64 - 1, description="Same seed, same request: same output (torch's seed range)."
    )
    logit_bias: dict[int, float] | None = Field(
        None, description="Token id (a string of an integer) -> bias in [-100, 100] added to its logit before sampling."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(0, description="Not implemented: only 0 is accepted.")
    presence_penalty: float | None = Field(0, description="Not implemented: only 0 is accepted.")

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _check_penalty(cls, penalty, info):
        if penalty:
            raise ValueError(f"{info.field_name} is not supported by this server; send 0 or leave it out")
        return penalty

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _check_logit_bias(cls, bias):
        if bias is None:
            return None
        if not isinstance(bias, dict):
            raise ValueError('logit_bias maps token ids to biases in [-100, 100], such as {"50256": -100}')
        for key, value in bias.items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(
                    f'key {key!r} is not a token id; keys are token ids written as strings, such as "50256"'
                )
            # Python counts true as 1, JSON does not; NaN and infinities fail the range check
            if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
                raise ValueError(f"the bias of token {key} is {value!r}; biases are numbers in [-100, 100]")
        return {int(key): float(value) for key, value in bias.items()}

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, several texts, token ids, or several lists of token ids."
    )
    max_tokens: int | None = Field(16, ge=0, description="Most tokens to generate per choice.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Log-probabilities of this many likely tokens.")
    echo: bool = Field(False, description="Return the prompt before the completion (and its logprobs).")


class ChatMessage(OpenAIModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] = Field(description="Text, or content parts of type text.")

    @field_validator("content")
    @classmethod
    def _check_parts(cls, content):
        for i, part in enumerate([] if isinstance(content, str) else content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"part {i} is of type {part.get('type')!r}; only text parts are supported, "
                    'such as {"type": "text", "text": "Hello"}'
                )
        return content

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, description="The newer name of max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Needs logprobs: true.")
    response_format: dict | None = Field(None, description='Not implemented: only {"type": "text"} is accepted.')
    tools: list[dict] | None = Field(None, description="Not implemented: only an empty list is accepted.")

    @field_validator("response_format")
    @classmethod
    def _check_response_format(cls, response_format):
        if response_format not in (None, {"type": "text"}):
            raise ValueError('only {"type": "text"} is supported by this server; JSON modes are not implemented')
        return response_format

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, tools):
        if tools:
            raise ValueError("tool calls are not supported by this server; send no tools")
        return tools

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, top, info):
        if top is not None and not info.data.get("logprobs"):
            raise ValueError('top_logprobs needs "logprobs": true; send both or neither')
        return top


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class StreamChunk(BaseModel):
    """A server-sent event of a stream, sent as `model_dump(exclude_unset=True)`: as OpenAI's, a chunk
    carries only the fields it sets (the first chat delta its role, a finish chunk an empty delta,
    usage only the last chunk), and always its `object`."""

    def model_post_init(self, context) -> None:
        self.model_fields_set.add("object")


class CompletionChunk(CompletionResponse, StreamChunk):
    """A /v1/completions stream event: a completion object whose choice carries the new text."""


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(StreamChunk):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mai"
    max_model_len: int = Field(description="Ours (as vLLM): the context length in tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
