"""`projector_init`: the aligned fit of the projectors from the two tokenizations, and DSKDv2's pseudo-inverse s2t."""

import dataclasses
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from hf_dwakd import DWAKDTrainer
from hf_dwakd.methods import distillation_loss
from hf_dwakd.objective import cross_model_attention, gather_responses
from hf_dwakd.objective.attention import normalise_per_example
from hf_dwakd.projector_init import (
    TokenBytes,
    calibration_share,
    fit_aligned_projectors,
    position_overlaps,
    pseudo_inverse_s2t,
    shared_vocabulary,
    target_overlap,
)
from hf_dwakd.projectors import DWAKDProjectors

from testing_utils import ROWS, make_config, make_trainer, save_tiny_model, shared_tokenizers, tiny_causal_lm

EOS = 0


def token_bytes(*pieces):
    """A hand-made vocabulary: id 0 is EOS (special), ids 1.. the pieces."""
    return TokenBytes(texts=[b"", *[piece.encode() for piece in pieces]], eos_token_id=EOS)


# ---- which positions pair ------------------------------------------------------------------------------------------


def test_overlap_counts_the_shared_bytes_of_each_pair_of_targets():
    student = token_bytes("He", "llo", " wor", "ld", "\nHe")
    teacher = token_bytes("Hel", "lo", " world", "<special>")
    teacher.texts[4] = b""  # a special token carries no text
    # Student "He|llo| wor|ld|EOS", teacher "Hel|lo|<special>| world|EOS".
    overlap = target_overlap([1, 2, 3, 4, EOS], [1, 2, 4, 3, EOS], student, teacher)
    expected = np.array(
        [
            [2, 0, 0, 0, 0],  # "He" lies in "Hel"
            [1, 2, 0, 0, 0],  # "llo": "l" in "Hel", "lo"
            [0, 0, 0, 4, 0],  # " wor" in " world"
            [0, 0, 0, 2, 0],
            [0, 0, 0, 0, 1],  # the two final EOS pair
        ]
    )
    np.testing.assert_array_equal(overlap, expected)


def test_a_straddled_prompt_character_pairs_with_nothing():
    student = token_bytes("\nHe", "llo")  # the first token carries the prompt's last character
    teacher = token_bytes("Hel", "lo")
    overlap = target_overlap([1, 2], [1, 2], student, teacher)
    np.testing.assert_array_equal(overlap, [[2, 0], [1, 2]])


def test_overlaps_follow_the_character_spans_of_the_data_pipeline(student_tokenizer, teacher_tokenizer):
    """On real tokenizers and ASCII text, the overlap of two targets is the number of characters their spans (the
    pipeline's offsets) share."""
    from hf_dwakd.data.formats import render_strings
    from hf_dwakd.data.tokens import tokenize_side

    example = render_strings("Q: name two fruits.\nA:", " Apples and pears, then 42 grapes.")
    sides = [tokenize_side(tokenizer, example) for tokenizer in (student_tokenizer, teacher_tokenizer)]
    targets = [side.ids[side.is_response].tolist() for side in sides]
    overlap = target_overlap(*targets, *(TokenBytes.from_tokenizer(t) for t in (student_tokenizer, teacher_tokenizer)))
    expected = np.zeros_like(overlap)
    student_spans = zip(sides[0].starts[sides[0].is_response], sides[0].ends[sides[0].is_response])
    for i, (s_start, s_end) in enumerate(student_spans):
        teacher_spans = zip(sides[1].starts[sides[1].is_response], sides[1].ends[sides[1].is_response])
        for j, (t_start, t_end) in enumerate(teacher_spans):
            expected[i, j] = max(0, min(s_end, t_end) - max(s_start, t_start))
    expected[-1, -1] = 1  # both EOS
    np.testing.assert_array_equal(overlap, expected)


# ---- the fit equals a direct least-squares solve ------------------------------------------------------------------


def fit_batches(trainer):
    return list(trainer._projector_fit_batches(trainer.teachers[0]))


def direct_rows(batches, student_bytes, teacher_bytes):
    """The regression rows built pair by pair in python loops, as docs/method.md states them."""
    rows = {name: ([], []) for name in ("query", "t2s", "s2t", "embed_t2s")}
    for student_side, teacher_side in batches:
        student, teacher = gather_responses(student_side), gather_responses(teacher_side)
        values = normalise_per_example(teacher.hidden, teacher.valid) + normalise_per_example(
            teacher.target_embeds, teacher.valid
        )
        keys = normalise_per_example(torch.cat([teacher.input_embeds, teacher.target_embeds], -1), teacher.valid)
        for b, overlap in enumerate(position_overlaps(student, teacher, student_bytes, teacher_bytes)):
            n, m = overlap.shape
            for i in range(n):
                if overlap[i].sum() == 0:
                    continue
                mix = sum(overlap[i, j] / overlap[i].sum() * values[b, j].double() for j in range(m))
                key = sum(overlap[i, j] / overlap[i].sum() * keys[b, j].double() for j in range(m))
                rows["t2s"][0].append(mix)
                rows["t2s"][1].append(student.hidden[b, i].double())
                rows["query"][0].append(torch.cat([student.input_embeds[b, i], student.target_embeds[b, i]]).double())
                rows["query"][1].append(key)
            for j in range(m):
                column = overlap[:, j]
                if column.sum() == 0:
                    continue
                rows["s2t"][0].append(sum(column[i] / column.sum() * student.hidden[b, i].double() for i in range(n)))
                rows["s2t"][1].append(teacher.hidden[b, j].double())
                rows["embed_t2s"][0].append(teacher.target_embeds[b, j].double())
                rows["embed_t2s"][1].append(
                    sum(column[i] / column.sum() * student.target_embeds[b, i].double() for i in range(n))
                )
    return {name: (torch.stack(x), torch.stack(y)) for name, (x, y) in rows.items()}


def lstsq_ridge(inputs, targets, ridge):
    """min |Y - X W - b|^2 + lam |W|^2, by least squares on the centred rows stacked over sqrt(lam) I."""
    input_mean, target_mean = inputs.mean(0), targets.mean(0)
    centred_inputs, centred_targets = inputs - input_mean, targets - target_mean
    lam = ridge * (centred_inputs**2).sum() / inputs.shape[1]
    size = inputs.shape[1]
    stacked_inputs = torch.cat([centred_inputs, math.sqrt(lam) * torch.eye(size, dtype=inputs.dtype)])
    stacked_targets = torch.cat([centred_targets, torch.zeros(size, targets.shape[1], dtype=targets.dtype)])
    weight = torch.linalg.lstsq(stacked_inputs, stacked_targets, driver="gelsd").solution
    return weight, target_mean - input_mean @ weight


def test_the_fit_equals_a_direct_ridge_least_squares_solve(tmp_path):
    trainer = make_trainer(tmp_path, projector_init="aligned", projector_init_ridge=0.01)
    batches = fit_batches(trainer)
    student_bytes = TokenBytes.from_tokenizer(trainer.processing_class)
    teacher_bytes = TokenBytes.from_tokenizer(trainer.teacher_processing_class)
    projectors = DWAKDProjectors(16, 24).double()
    fit = fit_aligned_projectors(projectors, batches, student_bytes, teacher_bytes, ridge=0.01)

    rows = direct_rows(batches, student_bytes, teacher_bytes)
    assert fit.examples == len(ROWS)
    assert fit.student_pairs == rows["t2s"][0].shape[0] and fit.teacher_pairs == rows["s2t"][0].shape[0]
    for name, (inputs, targets) in rows.items():
        weight, bias = lstsq_ridge(inputs, targets, 0.01)
        scale = fit.query_scale if name == "query" else 1.0
        linear = getattr(projectors, name)
        torch.testing.assert_close(linear.weight, scale * weight.T, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(linear.bias, scale * bias, rtol=1e-7, atol=1e-9)


def test_an_example_without_overlapping_targets_is_skipped(tmp_path):
    trainer = make_trainer(tmp_path, projector_init="aligned", per_device_train_batch_size=2)
    student, teacher = fit_batches(trainer)[0]
    teacher_bos = trainer.teacher_processing_class.bos_token_id  # special: stands for no text
    labels = teacher.labels.clone()
    labels[1][labels[1] != -100] = teacher_bos
    blanked = dataclasses.replace(teacher, labels=labels)

    def first_example(side):
        return dataclasses.replace(
            side,
            **{name: getattr(side, name)[:1] for name in ("hidden", "input_embeds", "target_embeds", "labels")},
        )

    bytes_ = [TokenBytes.from_tokenizer(t) for t in (trainer.processing_class, trainer.teacher_processing_class)]
    torch.manual_seed(0)
    with_skipped = DWAKDProjectors(16, 24)
    fit = fit_aligned_projectors(with_skipped, [(student, blanked)], *bytes_, ridge=1e-3)
    alone = DWAKDProjectors(16, 24)
    fit_alone = fit_aligned_projectors(alone, [(first_example(student), first_example(teacher))], *bytes_, ridge=1e-3)

    assert fit.examples == 2 and fit.student_pairs == fit_alone.student_pairs
    assert fit.student_positions > fit_alone.student_positions  # the skipped example's positions, unpaired
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(with_skipped.state_dict()[name], value)
    with pytest.raises(ValueError, match="no student and teacher response tokens covering the same text"):
        fit_aligned_projectors(DWAKDProjectors(16, 24), [(student, blanked_all(teacher, teacher_bos))], *bytes_, 1e-3)


class ThreadProcesses:
    """`size` threads standing for torch.distributed processes: `all_reduced` sums a tensor over them in place."""

    def __init__(self, size):
        self.size, self.slots, self.local = size, {}, threading.local()
        self.barrier = threading.Barrier(size, timeout=120)

    def all_reduced(self, total):
        self.slots[self.local.rank] = total.clone()
        self.barrier.wait()
        summed = sum(self.slots[rank] for rank in range(self.size))
        self.barrier.wait()  # every process has read every slot before any writes its next one
        return total.copy_(summed)

    def run(self, function):
        def as_rank(rank):
            self.local.rank = rank
            return function(rank)

        with ThreadPoolExecutor(self.size) as pool:
            return [future.result() for future in [pool.submit(as_rank, rank) for rank in range(self.size)]]


def test_two_processes_calibrate_the_query_scale_on_the_examples_one_process_does(tmp_path, monkeypatch):
    """Each process fits on every second example of the sample (as the trainer deals them) and calibrates on its
    `calibration_share`: the two write what one process fits on all examples, query scale included."""
    import hf_dwakd.projector_init.aligned as aligned_module
    import hf_dwakd.projector_init.ridge as ridge_module

    trainer = make_trainer(tmp_path, projector_init="aligned", per_device_train_batch_size=1)
    examples = fit_batches(trainer)  # one example per batch, in the sample's order
    bytes_ = [TokenBytes.from_tokenizer(t) for t in (trainer.processing_class, trainer.teacher_processing_class)]

    def fit(rank, size, calibration):
        projectors = DWAKDProjectors(16, 24).double()
        return fit_aligned_projectors(projectors, examples[rank::size], *bytes_, 1e-3, calibration), projectors

    scales = {calibration: fit(0, 1, calibration)[0].query_scale for calibration in range(1, len(ROWS) + 1)}
    calibration = next(k for k in range(1, len(ROWS) // 2 + 1) if scales[k] != scales[2 * k])  # where it matters
    one_fit, one = fit(0, 1, calibration)

    processes = ThreadProcesses(2)
    monkeypatch.setattr(aligned_module, "all_reduced", processes.all_reduced)
    monkeypatch.setattr(ridge_module, "all_reduced", processes.all_reduced)
    shares = [calibration_share(rank, 2, calibration) for rank in range(2)]
    assert sum(shares) == calibration
    results = processes.run(lambda rank: fit(rank, 2, shares[rank]))
    for two_fit, two in results:
        assert two_fit == one_fit  # counts over both processes, and the same query scale
        for name, value in one.state_dict().items():
            torch.testing.assert_close(two.state_dict()[name], value, rtol=1e-6, atol=1e-9)
    # Each process calibrating on its own first `calibration` examples would choose another scale.
    assert processes.run(lambda rank: fit(rank, 2, calibration)[0])[0].query_scale != one_fit.query_scale


def test_the_fit_refuses_fewer_sample_rows_than_processes(tmp_path, monkeypatch):
    from accelerate import Accelerator

    trainer = make_trainer(tmp_path, projector_init="aligned")
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: len(ROWS) + 1))
    with pytest.raises(ValueError, match="8 training rows, fewer than the 9 processes: raise `projector_init_rows`"):
        trainer.start_projectors()


def blanked_all(teacher, token_id):
    labels = teacher.labels.clone()
    labels[labels != -100] = token_id
    return dataclasses.replace(teacher, labels=labels)


# ---- the aligned start at step 0 -----------------------------------------------------------------------------------


def memorising_student(steps=40):
    """A tiny student trained on ROWS until it predicts most of their response tokens, so that its states carry
    the label (as a real model's do); random tiny models predict nothing, whatever the projectors."""
    from datasets import Dataset

    from hf_dwakd.data import DistillationCollator, prepare_distillation_dataset

    tokenizer, teacher_tokenizer = shared_tokenizers()
    model = tiny_causal_lm(tokenizer, family="llama", hidden_size=16, seed=1)
    prepared = prepare_distillation_dataset(Dataset.from_list(ROWS), tokenizer, teacher_tokenizer, 64, 32)
    batch = DistillationCollator(tokenizer.pad_token_id, teacher_tokenizer.pad_token_id)(list(prepared))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, float(loss.detach())


def step_zero_figures(trainer):
    """t2s_acc, ce_t2s (per token) and the attention mass on the overlapping teacher tokens, over ROWS."""
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))]))
    trainer.model.eval()
    with torch.no_grad():
        student, _ = trainer.student_side(batch, trainer.model)
        teacher, _ = trainer.teacher_side(batch)
        _, metrics = distillation_loss(trainer.args, student, teacher, None, projectors=trainer.projectors)
        student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
        attention = cross_model_attention(student_responses, teacher_responses, trainer.projectors).t2s_attention
        bytes_ = [TokenBytes.from_tokenizer(t) for t in (trainer.processing_class, trainer.teacher_processing_class)]
        overlaps = position_overlaps(student_responses, teacher_responses, *bytes_)
    masses = []
    for b, overlap in enumerate(overlaps):
        n, m = overlap.shape
        paired = overlap.sum(1) > 0
        masses.append((attention[b, :n, :m].double()[paired] * (overlap[paired] > 0)).sum(1))
    return float(metrics["t2s_acc"]), float(metrics["ce_t2s"]), float(torch.cat(masses).mean())


@pytest.mark.slow
def test_the_aligned_start_predicts_better_than_random_at_step_0(tmp_path):
    student, loss = memorising_student()
    assert loss < 1.0  # it predicts most response tokens
    figures = {}
    for init in ("random", "aligned"):
        trainer = make_trainer(tmp_path / init, projector_init=init, per_device_train_batch_size=4)
        assert not trainer.model.load_state_dict(student.state_dict(), strict=False).unexpected_keys
        trainer.start_projectors()
        figures[init] = step_zero_figures(trainer)
    (random_acc, random_ce, random_mass), (aligned_acc, aligned_ce, aligned_mass) = figures.values()
    assert aligned_acc > random_acc + 0.2
    assert aligned_ce < random_ce - 1.0
    assert aligned_mass > random_mass + 0.3


# ---- the trainer applies it once, never over trained or restored projectors ---------------------------------------


def test_train_starts_the_projectors_once_and_a_resumed_run_keeps_its_own(tmp_path):
    trainer = make_trainer(tmp_path, projector_init="aligned", max_steps=1, save_strategy="steps", save_steps=1)
    random_start = {k: v.clone() for k, v in trainer.projectors.state_dict().items()}
    fitted = trainer.start_projectors()
    assert fitted and trainer.start_projectors() == {}  # once per trainer
    fitted_state = {k: v.clone() for k, v in trainer.projectors.state_dict().items()}
    assert not torch.equal(fitted_state["t2s.weight"], random_start["t2s.weight"])
    trainer.train()  # already started: trains from the fit
    trained = {k: v.clone() for k, v in trainer.projectors.state_dict().items()}

    resumed = make_trainer(tmp_path, projector_init="aligned", max_steps=1, save_strategy="steps", save_steps=1)
    calls = []
    resumed.start_projectors = lambda: calls.append(1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert not calls
    for name, value in trained.items():
        torch.testing.assert_close(resumed.projectors.state_dict()[name], value)


@pytest.fixture(scope="module")
def plain_fit(tmp_path_factory):
    """The projectors that `make_trainer`'s run fits with `projector_init: aligned`."""
    plain = make_trainer(tmp_path_factory.mktemp("plain"), projector_init="aligned")
    plain.start_projectors()
    return plain.projectors.state_dict()


@pytest.mark.parametrize("variant", ["teacher_cache", "lora", "dskd"])
def test_the_fit_is_the_same_with_a_teacher_cache_and_lora_and_fits_dskd(tmp_path, plain_fit, variant):
    """A cached teacher gives the live teacher's states, and LoRA adapters start at zero: both fit what the plain
    run fits. dskd has no `embed_t2s`: the other three are fitted as for dwakd."""
    from datasets import Dataset
    from peft import LoraConfig

    from hf_dwakd.teacher_cache import build_teacher_cache

    if variant == "teacher_cache":
        folder = save_tiny_model(tmp_path / "teacher", "llama2", hidden_size=24, seed=2)
        options = dict(teacher_cache_dir=str(tmp_path / "cache"), teacher_model_name_or_path=str(folder))
        build_teacher_cache(
            make_config(tmp_path, **options), Dataset.from_list(ROWS), None, student_tokenizer=shared_tokenizers()[0]
        )
        other = DWAKDTrainer(
            model=tiny_causal_lm(shared_tokenizers()[0], hidden_size=16, seed=1),  # make_trainer's student
            args=make_config(tmp_path / "other", projector_init="aligned", **options),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=shared_tokenizers()[0],
        )
        assert other.cached_teacher is not None
    elif variant == "lora":
        lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        other = make_trainer(tmp_path / "other", projector_init="aligned", peft_config=lora)
    else:
        other = make_trainer(tmp_path / "other", projector_init="aligned", kd_method="dskd")
        assert other.projectors.embed_t2s is None
    other.start_projectors()
    for name, value in other.projectors.state_dict().items():
        torch.testing.assert_close(value, plain_fit[name], rtol=1e-4, atol=1e-5)


def test_pseudo_inverse_s2t_gives_the_student_logits_through_the_teacher_head_on_shared_strings():
    student_bytes = token_bytes("a", "b", "c", "d", "e", "f", "g")
    teacher_bytes = token_bytes("g", "x", "f", "e", "d", "c", "b", "a", "y")
    student_ids, teacher_ids = shared_vocabulary(student_bytes, teacher_bytes)
    assert [student_bytes.texts[i] for i in student_ids] == [teacher_bytes.texts[j] for j in teacher_ids]
    assert len(student_ids) == 7
    generator = torch.Generator().manual_seed(0)
    student_head, teacher_head = torch.randn(8, 3, generator=generator), torch.randn(10, 4, generator=generator)
    s2t = torch.nn.Linear(3, 4)
    assert pseudo_inverse_s2t(s2t, student_head, teacher_head, student_bytes, teacher_bytes) == 7
    expected = torch.linalg.lstsq(teacher_head[teacher_ids].double(), student_head[student_ids].double()).solution
    torch.testing.assert_close(s2t.weight.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(s2t.bias, torch.zeros(4))
    # Three shared strings cover the student's 3 dimensions but not the teacher head's 4 columns: refused.
    with pytest.raises(ValueError, match=r"teacher's hidden size \(4\); they share 3"):
        pseudo_inverse_s2t(s2t, student_head, teacher_head, token_bytes("a", "b", "c"), teacher_bytes)


def test_the_trainer_starts_s2t_from_the_pseudo_inverse_of_the_two_heads(tmp_path):
    trainer = make_trainer(tmp_path, projector_init="pseudo_inverse")
    random_start = {name: value.clone() for name, value in trainer.projectors.state_dict().items()}
    (shared,) = trainer.start_projectors().values()
    student_bytes, teacher_bytes = (
        TokenBytes.from_tokenizer(t) for t in (trainer.processing_class, trainer.teacher_processing_class)
    )
    student_ids, teacher_ids = shared_vocabulary(student_bytes, teacher_bytes)
    assert shared == len(student_ids) > 24
    student_head = trainer.model.get_output_embeddings().weight.detach().double()[student_ids]
    teacher_head = trainer.teacher_model.get_output_embeddings().weight.detach().double()[teacher_ids]
    expected = torch.linalg.lstsq(teacher_head, student_head).solution  # min |W_t[S] X - W_s[S]|, X (d_t, d_s)
    torch.testing.assert_close(trainer.projectors.s2t.weight.double(), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(trainer.projectors.s2t.bias, torch.zeros(24))
    for name, value in trainer.projectors.state_dict().items():  # the other three keep their random start
        if not name.startswith("s2t."):
            assert torch.equal(value, random_start[name]), name


def test_the_config_refuses_bad_values(tmp_path):
    with pytest.raises(ValueError, match="`projector_init` must be one of"):
        make_config(tmp_path, projector_init="identity")
    with pytest.raises(ValueError, match="`projector_init_rows` must be a positive int"):
        make_config(tmp_path, projector_init_rows=0)
    with pytest.raises(ValueError, match="`projector_init_ridge` must be > 0"):
        make_config(tmp_path, projector_init_ridge=0.0)
    with pytest.raises(ValueError, match="`projector_init` belongs to kd_method dwakd / dskd"):
        make_config(tmp_path, kd_method="uld", projector_init="aligned")
