"""The part of the teacher a cached run keeps: its input-embedding and output layers, and the `SideOutputs` they
give with the cached last hidden states (the same as the live teacher's, see `cached_teacher_outputs`)."""

import contextlib
import copy

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as transformers_logging

from ..data.collator import HIDDEN_SUFFIX
from ..objective import shift_for_next_token
from ..objective.outputs import IGNORE_INDEX, SideOutputs
from .store import states_from_storage


class LightTeacher(nn.Module):
    """A teacher's input-embedding module (its own class: Gemma's scales its output) and output layer."""

    def __init__(self, input_embeddings: nn.Module, output_layer: nn.Module, config):
        super().__init__()
        self.input_embeddings = input_embeddings
        self.output_layer = output_layer
        self.config = config

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> "LightTeacher":
        return cls(model.get_input_embeddings(), model.get_output_embeddings(), model.config)

    @property
    def hidden_size(self) -> int:
        return self.config.get_text_config().hidden_size


def load_light_teacher(name_or_path: str, **init_kwargs) -> LightTeacher:
    """The teacher's two layers, read from its checkpoint without its decoder layers.

    transformers builds the model class from a copy of the config with no decoder layer, so only the embedding,
    the output layer (the embedding again when they are tied) and the final norm are read from the safetensors
    files; the decoder layers' tensors are never read.
    """
    init_kwargs = dict(init_kwargs)
    config = AutoConfig.from_pretrained(
        name_or_path,
        trust_remote_code=init_kwargs.get("trust_remote_code", False),
        revision=init_kwargs.get("revision"),
    )
    without_layers = copy.deepcopy(config)
    text_config = without_layers.get_text_config()
    text_config.num_hidden_layers = 0
    if getattr(text_config, "layer_types", None) is not None:
        text_config.layer_types = []
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # it would list every decoder tensor as unused
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, config=without_layers, **init_kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.requires_grad_(False)
    return LightTeacher(model.get_input_embeddings(), model.get_output_embeddings(), config).eval()


class CachedTeacherSide:
    """The teacher's role in a cached run, called like a live `ModelSide`: a collated batch -> `SideOutputs`.

    `autocast` is the mixed-precision context the live teacher's output layer runs under, so that a cached run
    computes the same logits; `prefix` the teacher's columns in the batch (`teacher_`, `teacher_2_`, ...)."""

    def __init__(
        self, teacher: LightTeacher, vocab_size: int, autocast=contextlib.nullcontext, prefix: str = "teacher_"
    ):
        self.teacher, self.vocab_size, self.autocast, self.prefix = teacher, vocab_size, autocast, prefix

    def __call__(self, batch: dict, model=None, full_logits: bool = False) -> tuple[SideOutputs, None]:
        return cached_teacher_outputs(batch, self.teacher, self.vocab_size, self.autocast, self.prefix), None


def cached_teacher_outputs(
    batch: dict, teacher: LightTeacher, vocab_size: int, autocast=contextlib.nullcontext, prefix: str = "teacher_"
) -> SideOutputs:
    """The teacher's `SideOutputs` from a collated batch holding its cached states.

    Everything the objectives read of the teacher lies at response positions (the next-token label is not -100):
    the logits, hidden states and embeddings that `gather_responses` and `response_rows` select, and MinED's
    aligned teacher positions. So the cached states are scattered into a zero (B, L, d) tensor at those
    positions; the embeddings come from the ids, and the losses apply the output layer to the rows they read, as
    with a live teacher.
    """
    input_ids, labels = batch[f"{prefix}input_ids"], batch[f"{prefix}labels"]
    stored = states_from_storage(batch[prefix + HIDDEN_SUFFIX])  # (B, n_max, d), zero-padded by the collator
    weight = teacher.output_layer.weight
    predicts_response = labels[:, 1:] != IGNORE_INDEX
    lengths = predicts_response.sum(dim=1)
    if stored.shape[1] < int(lengths.max()):
        raise ValueError(
            f"The cached teacher states hold {stored.shape[1]} positions for an example with {int(lengths.max())} "
            "response positions: the cache does not belong to this data; build it again."
        )
    kept = torch.arange(stored.shape[1], device=stored.device) < lengths[:, None]
    with torch.no_grad():
        hidden = stored.new_zeros(input_ids.shape[0], input_ids.shape[1], stored.shape[-1], dtype=weight.dtype)
        hidden[:, :-1][predicts_response] = stored[kept].to(weight.dtype)
        embeddings = teacher.input_embeddings(input_ids)

    def output_layer(rows):
        with autocast():
            return teacher.output_layer(rows)

    return shift_for_next_token(None, hidden, embeddings, labels, weight, vocab_size, output_layer=output_layer)
