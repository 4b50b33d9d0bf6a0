"""The method registry: a new method declared in one place trains through the config, the loss and the trainer;
the weights, divergences and token counts every method shares."""

import pytest
import torch
from datasets import Dataset

from hf_dwakd import DWAKDConfig, DWAKDTrainer, registry
from hf_dwakd.baselines import dskd_loss, uld_loss
from hf_dwakd.baselines.common import response_logits, student_ce
from hf_dwakd.methods import distillation_loss
from hf_dwakd.objective import DWAKDLossOptions, dwakd_loss, gather_responses
from hf_dwakd.registry import DistillationMethod, get_method, register_method

from testing_utils import load_tokenizer, make_config, make_inputs, tiny_causal_lm

ROWS = [
    {"prompt": "Name a colour.\n", "completion": "Blue, like the sky."},
    {"prompt": "Add 2 and 3.\n", "completion": "2 + 3 = 5"},
]


def config(tmp_path, **fields):
    return make_config(tmp_path, max_steps=1, **fields)


# ---- a toy method, registered in one place --------------------------------------------------------------------


def _toy_loss(args, student, teacher, num_items_in_batch, context):
    """CE plus the squared gap between the two models' mean response logit, weighted by `kd_weight`."""
    ce = student_ce(student, num_items_in_batch)
    student_logits = response_logits(student, gather_responses(student))
    teacher_logits = response_logits(teacher, gather_responses(teacher), detach=True)
    gap = student_logits.mean() - teacher_logits.mean()
    return ce + args.kd_weight * gap**2, {"ce": ce.detach(), "gap": gap.detach()}


TOY = DistillationMethod(name="toy", loss=_toy_loss, fields=("kd_weight",), token_sum_metrics={"ce"})


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry.registered_methods()))
    return register_method(TOY)


def test_a_registered_method_is_checked_by_the_config(tmp_path, toy_registered):
    args = config(tmp_path, kd_method="toy", kd_weight=0.3)
    assert args.needs_teacher and not args.needs_projectors
    with pytest.raises(ValueError, match="`dtw_weight` belongs to kd_method dwakd and has no effect"):
        config(tmp_path, kd_method="toy", dtw_weight=0.3)
    with pytest.raises(ValueError, match="`kd_weight` belongs to kd_method .*toy"):
        config(tmp_path, kd_method="sft", kd_weight=0.3)
    with pytest.raises(ValueError, match="already registered"):
        register_method(TOY)


def test_a_registered_method_gives_the_loss_and_trains_a_step(tmp_path, toy_registered):
    student, teacher, _ = make_inputs()
    args = config(tmp_path, kd_method="toy", kd_weight=0.3)
    loss, metrics = distillation_loss(args, student, teacher, None)
    expected, _ = _toy_loss(args, student, teacher, None, None)
    assert loss.item() == expected.item() and set(metrics) == {"ce", "gap"}

    student_tokenizer, teacher_tokenizer = load_tokenizer("gpt2"), load_tokenizer("llama2")
    model = tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1)
    before = {name: value.clone() for name, value in model.named_parameters()}
    trainer = DWAKDTrainer(
        model=model,
        teacher_model=tiny_causal_lm(teacher_tokenizer, hidden_size=24, seed=2),
        args=config(tmp_path, kd_method="toy", kd_weight=0.3),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    assert trainer.projectors is None and trainer.aligner is None
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"loss", "ce", "gap"} <= set(logged)
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters())


def test_a_method_must_be_named_in_lower_case_and_have_a_teacher_for_projectors():
    with pytest.raises(ValueError, match="lower-case identifier"):
        DistillationMethod(name="My-KD", loss=_toy_loss)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationMethod(name="lonely", loss=_toy_loss, needs_teacher=False, needs_projectors=True)


def test_each_built_in_method_declares_what_the_trainer_builds():
    assert not get_method("sft").needs_teacher
    assert [name for name in registry.registered_methods() if get_method(name).needs_projectors] == ["dwakd", "dskd"]
    assert get_method("mined").build_aligner is not None
    assert {"kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed"} <= get_method("dwakd").token_sum_metrics


# ---- one name per knob ---------------------------------------------------------------------------------------


def test_a_bad_option_is_echoed_with_its_own_name_and_value(tmp_path):
    with pytest.raises(ValueError, match=r"kd_divergence='gamma' is unknown") as error:
        config(tmp_path, kd_divergence="gamma")
    assert "dtw_gamma" not in str(error.value)
    with pytest.raises(ValueError, match=r"kd_teacher_divergence='kl' is unknown"):
        config(tmp_path, kd_teacher_divergence="kl")


def test_the_config_fields_are_the_objective_options(tmp_path):
    args = config(tmp_path, kd_temperature=1.5, use_dtw_band=False, dtw_band_alpha=0.3, kd_chunk_size=8)
    options = args.loss_options()
    assert (options.kd_temperature, options.use_dtw_band, options.dtw_band_alpha) == (1.5, False, 0.3)
    assert options.kd_chunk_size == 8 and options.kd_teacher_divergence is None


# ---- dskd's weights and teacher-space divergence -----------------------------------------------------------


def test_dskd_ce_weight_follows_kd_weight_unless_both_are_set(tmp_path):
    args = config(tmp_path, kd_method="dskd", kd_weight=0.9)
    assert args.ce_weight == pytest.approx(0.1)
    student, teacher, projectors = make_inputs()
    loss, metrics = distillation_loss(args, student, teacher, None, projectors=projectors)
    assert loss.item() == pytest.approx((0.1 * metrics["ce"] + 0.9 * metrics["kd"]).item(), rel=1e-6)

    assert config(tmp_path, kd_method="dskd", ce_weight=0.3, kd_weight=0.7).ce_weight == 0.3
    with pytest.raises(ValueError, match=r"`ce_weight` \(0.5\) \+ `kd_weight` \(0.9\) != 1"):
        config(tmp_path, kd_method="dskd", ce_weight=0.5, kd_weight=0.9)
    with pytest.raises(ValueError, match="kd_weight.*in \\[0, 1\\]"):
        config(tmp_path, kd_method="dskd", kd_weight=1.5)
    # Other methods keep their own default.
    assert config(tmp_path, kd_method="uld", kd_weight=0.9).ce_weight == 0.5
    assert config(tmp_path, kd_weight=0.9).ce_weight == 0.5
    assert "1 - kd_weight" in DWAKDConfig.__dataclass_fields__["ce_weight"].metadata["help"]


def test_dskd_teacher_divergence_is_forward_kl_unless_set(tmp_path):
    student, teacher, projectors = make_inputs()

    def kd_teacher(**fields):
        args = config(tmp_path, kd_method="dskd", **fields)
        return distillation_loss(args, student, teacher, None, projectors=projectors)[1]["kd_teacher"]

    forward = kd_teacher()
    assert kd_teacher(kd_divergence="js") == forward
    js = kd_teacher(kd_teacher_divergence="js")
    assert js != forward
    assert js == dskd_loss(student, teacher, projectors=projectors, teacher_divergence="js")[1]["kd_teacher"]


# ---- num_items_in_batch ----------------------------------------------------------------------------------------


def test_a_count_per_gpu_as_data_parallel_passes_it_is_summed():
    student, teacher, projectors = make_inputs()
    per_gpu = torch.tensor([[20], [20]])  # Trainer under nn.DataParallel: (n_gpu, 1)
    options = DWAKDLossOptions()
    assert dwakd_loss(student, teacher, projectors, options, per_gpu)[0] == dwakd_loss(
        student, teacher, projectors, options, 40
    )[0]
    assert uld_loss(student, teacher, per_gpu)[0] == uld_loss(student, teacher, 40)[0]
    with pytest.raises(ValueError, match="num_items_in_batch must be a count > 0"):
        dwakd_loss(student, teacher, projectors, options, torch.tensor([[0], [0]]))
