"""`ModelSide`: one model's role (student or teacher) turning collated batches into its `SideOutputs`.

The one path from a model to the objective's inputs, used by the trainer, the teacher cache build and `inspect`.
On its first batch a side settles how its model runs, once and for good:
- rows only (the forward applies the output layer to no position; the losses apply it to the rows they read),
  unless the model's logits are not its output layer on its last hidden state (`logit_rule`); then the full
  forward, logits at every position;
- unpadded (`hf_dwakd.unpadded`), when asked, when the model takes position ids and when its unpadded forward
  gives its padded one on rows of different lengths; else padded.
Under several processes every process takes the same decisions (a process running another forward than the
others would desynchronise the collective calls of ZeRO-3 or FSDP).
"""

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .logit_rule import logit_postprocessing, reproduces_logits
from .objective.outputs import SideOutputs, no_logit_positions, shift_for_next_token
from .unpadded import repadded, rows_of_different_lengths, unpadded_forward_matches, unpadded_inputs


@dataclass(frozen=True)
class ForwardMode:
    rows_only: bool  # the output layer runs on the rows the losses read; else the forward returns every logit
    unpadded: bool  # the forward runs on the batch's real tokens only
    full_logits_reason: str | None = None  # why not rows only


class ModelSide:
    """Turns a collated batch into one model's `SideOutputs`.

    role: "student" or "teacher" (names the model in warnings); prefix: its columns' prefix in the batch ("" or
    "teacher_"); vocab_size: `len(tokenizer)`; model: the model it runs when a call passes none.
    unpadded_forward: try the unpadded forward; across_processes: agree the decisions with the other processes.
    unwrap: the model under a DDP/DeepSpeed wrapper; autocast: the mixed-precision context of the forward and of
    the output layer applied outside it; full_weight: the output layer's weight whole (gathered under ZeRO-3).
    output_hooks: False runs the output layer applied outside the forward without its module's hooks: under FSDP2
    they are FSDP's, and called again after the model's forward they would start a new pass of its unit, which
    then reshards in the middle of the backward (its weights are gathered there already: `fsdp2.gathered_roots`).
    """

    def __init__(
        self,
        role: str,
        vocab_size: int,
        *,
        prefix: str = "",
        model=None,
        unpadded_forward: bool = True,
        across_processes: bool = True,
        unwrap=lambda model: model,
        autocast=contextlib.nullcontext,
        full_weight=None,
        output_hooks: bool = True,
    ):
        self.role, self.vocab_size, self.prefix, self.model = role, vocab_size, prefix, model
        self.unpadded_forward, self.across_processes = unpadded_forward, across_processes
        self.unwrap, self.autocast = unwrap, autocast
        self.full_weight = full_weight or whole_weight
        self.output_hooks = output_hooks
        self.mode: ForwardMode | None = None

    def __call__(self, batch: dict, model=None, full_logits: bool = False) -> tuple[SideOutputs, torch.Tensor]:
        """`(side outputs, the logits the forward returned)`; `full_logits`: the full forward this time (the
        logits at every position, e.g. for evaluation metrics)."""
        model = model if model is not None else self.model
        columns = ("input_ids", "attention_mask", "labels")
        input_ids, attention_mask, labels = (batch[self.prefix + column] for column in columns)
        if self.mode is None:
            self.settle(model, input_ids, attention_mask)
            if self.mode.full_logits_reason is not None:
                warnings.warn(
                    f"The {self.role}'s logits are not its output layer applied to its last hidden state "
                    f"({self.mode.full_logits_reason}): it runs its full forward, output layer at every position."
                )
        rows_only = self.mode.rows_only and not full_logits
        unpadded = rows_only and self.mode.unpadded
        unwrapped = self.unwrap(model)
        forward_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if unpadded:
            forward_inputs = dict(zip(("input_ids", "position_ids"), unpadded_inputs(input_ids, attention_mask)))
        keep = {"logits_to_keep": no_logit_positions(input_ids.device)} if rows_only else {}
        with captured_output(unwrapped.get_input_embeddings()) as embeddings, self.autocast():
            outputs = model(**forward_inputs, output_hidden_states=True, use_cache=False, **keep)
        hidden, input_embeds = outputs.hidden_states[-1], embeddings[0]
        if unpadded:
            hidden, input_embeds = repadded(hidden, attention_mask), repadded(input_embeds, attention_mask)
        output_module = unwrapped.get_output_embeddings()
        side = shift_for_next_token(
            None if rows_only else outputs.logits,
            hidden,
            input_embeds,
            labels,
            self.full_weight(output_module.weight),
            self.vocab_size,
            output_layer=self.output_layer(output_module) if rows_only else None,
        )
        return side, outputs.logits

    def output_layer(self, module):
        """`module` on hidden rows under the autocast of the forward (without its hooks unless `output_hooks`)."""
        forward = module if self.output_hooks else module.forward

        def apply(rows):
            with self.autocast():
                return forward(rows)

        return apply

    def settle(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ForwardMode:
        """Decide, on this first batch, how the model runs from now on (see the module's docstring)."""
        unwrapped = self.unwrap(model)
        reason = None
        if not takes_argument(unwrapped, "logits_to_keep"):
            reason = "its forward takes no `logits_to_keep`"
        elif settings := logit_postprocessing(unwrapped.config):
            reason = f"its config sets {', '.join(settings)}"
        elif not self._output_layer_gives_logits(model, input_ids, attention_mask):
            reason = "they differ numerically: it post-processes them"
        rows_only = self._agreed(reason is None, input_ids.device)
        if rows_only != (reason is None):
            reason = "another process found so"
        unpadded = self.unpadded_forward and rows_only and takes_argument(unwrapped, "position_ids")
        if unpadded:  # every process runs the check's forwards, whatever its own batch holds
            matches = unpadded_forward_matches(model, *rows_of_different_lengths(input_ids, attention_mask))
            unpadded = self._agreed(matches, input_ids.device)
            if not unpadded:
                warnings.warn(
                    f"The {self.role}'s forward on unpadded rows (position ids restarting per row, no attention "
                    "mask) differs from its padded forward: its attention does not keep packed rows apart. It runs "
                    "padded."
                )
        self.mode = ForwardMode(rows_only, unpadded, reason)
        return self.mode

    def _output_layer_gives_logits(self, model, input_ids, attention_mask) -> bool:
        """The numeric guard: the output layer on the last hidden state against the logits, at each row's last
        position, in eval mode (no dropout)."""
        training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast():
                outputs = model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    output_hidden_states=True,
                    use_cache=False,
                    logits_to_keep=1,
                )
                recomputed = self.unwrap(model).get_output_embeddings()(outputs.hidden_states[-1][:, -1])
        finally:
            model.train(training)
        return reproduces_logits(recomputed, outputs.logits[:, -1])

    def _agreed(self, decision: bool, device) -> bool:
        """True when every process decided True."""
        if not (self.across_processes and dist.is_available() and dist.is_initialized()):
            return decision
        value = torch.tensor(int(decision), device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value)


def whole_weight(weight: torch.Tensor) -> torch.Tensor:
    """The output layer's weight whole, detached where FSDP2 shards it (DWA-KD multiplies by it, detached)."""
    return weight.full_tensor().detach() if isinstance(weight, DTensor) else weight


def takes_argument(model, name: str) -> bool:
    """Whether the causal LM (under a PEFT wrapper, its base model) names `name` among its forward's arguments
    (models with ALiBi, as Bloom, take no `position_ids`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


@contextlib.contextmanager
def captured_output(module):
    """Collect `module`'s forward outputs: the embeddings as the forward computes them (also under ZeRO-3)."""
    captured = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        yield captured
    finally:
        handle.remove()
