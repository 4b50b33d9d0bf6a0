"""The two-tokenizer data pipeline, checked against the real GPT-2 (byte-level BPE) and Llama-2 (SentencePiece with
byte fallback) tokenizers: response positions, EOS/BOS, chat templates, truncation, dropped rows and padding."""

import warnings

import datasets
import pytest
import torch

from hf_dwakd.data import DistillationCollator, check_dataset_columns, prepare_distillation_dataset

from testing_utils import CHATML, DATA, INST, load_tokenizer

SIDES = ("", "teacher_")

@pytest.fixture(scope="module")
def templated_tokenizers():
    student, teacher = load_tokenizer("gpt2"), load_tokenizer("llama2")
    student.chat_template, teacher.chat_template = CHATML, INST
    return student, teacher


def prepare(rows, student, teacher, **kwargs):
    return prepare_distillation_dataset(datasets.Dataset.from_list(rows), student, teacher, **kwargs)


def split_at_response(row, prefix):
    """(prompt ids, response ids); asserts labels are -100 up to the response and equal the ids from there on."""
    ids, labels = row[f"{prefix}input_ids"], row[f"{prefix}labels"]
    start = next(i for i, label in enumerate(labels) if label != -100)
    assert set(labels[:start]) <= {-100}
    assert labels[start:] == ids[start:]
    assert row[f"{prefix}attention_mask"] == [1] * len(ids)
    return ids[:start], ids[start:]


def text_of(tokenizer, ids):
    """Decoded text without a leading BOS that the tokenizer adds by itself (GPT-2 adds none)."""
    adds_bos = tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    if adds_bos and ids[:1] == [tokenizer.bos_token_id]:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_response_is(row, prefix, tokenizer, completion, ends_with_eos=True):
    """In context, the response tokens decode to exactly `completion`, followed by one EOS when `ends_with_eos`."""
    prompt_ids, response_ids = split_at_response(row, prefix)
    eos = tokenizer.eos_token_id
    if ends_with_eos:
        assert response_ids[-1] == eos and eos not in response_ids[:-1]
        response_ids = response_ids[:-1]
    else:
        assert eos not in response_ids
    # SentencePiece drops the first space of a decoded sequence, so decode the response after the prompt.
    assert text_of(tokenizer, prompt_ids + response_ids) == text_of(tokenizer, prompt_ids) + completion
    return prompt_ids


# (prompt, completion) pairs whose boundary no token of either fixture tokenizer spans.
CLEAN_BOUNDARY = [
    ("### Response:\n", "The answer is 42."),
    ("Q:", " yes"),  # leading space in the completion
    ("Q:\n", "yes  \n"),  # trailing whitespace
    ("Say hi.\n\n", "\tHi!  "),
    ("问题：\n", "你好，世界。"),  # CJK: byte-split by GPT-2
    ("React:\n", "👍🏽 great 🎉"),  # emoji with a skin-tone modifier
    ("```python\n", "def f(x):\n    return x ** 2\n```"),
    ("Glyph:\n", "𝔘ꙮ ok"),  # byte fallback in Llama-2
    ("Tags:\n", "<s>strike</s> <|endoftext|>"),  # special-token strings in the data stay text
    ("", "Hello"),  # no prompt
]


@pytest.fixture(scope="module")
def clean_rows(student_tokenizer, teacher_tokenizer):
    rows = [{"prompt": prompt, "completion": completion} for prompt, completion in CLEAN_BOUNDARY]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing is dropped, so nothing is said
        return list(prepare(rows, student_tokenizer, teacher_tokenizer))


@pytest.mark.parametrize("index", range(len(CLEAN_BOUNDARY)), ids=[repr(c)[:24] for _, c in CLEAN_BOUNDARY])
def test_response_tokens_decode_to_exactly_the_completion_on_both_sides(
    index, clean_rows, student_tokenizer, teacher_tokenizer
):
    prompt, completion = CLEAN_BOUNDARY[index]
    row = clean_rows[index]
    for prefix, tokenizer in zip(SIDES, (student_tokenizer, teacher_tokenizer)):
        prompt_ids = check_response_is(row, prefix, tokenizer, completion)
        assert text_of(tokenizer, prompt_ids) == prompt
    # GPT-2 decodes byte-exactly, so its response tokens alone give the completion and EOS.
    _, response_ids = split_at_response(row, "")
    assert student_tokenizer.decode(response_ids) == completion + "<|endoftext|>"
    # BOS as each tokenizer adds it: Llama-2 does, GPT-2 does not.
    assert row["teacher_input_ids"][0] == teacher_tokenizer.bos_token_id
    assert row["teacher_input_ids"].count(teacher_tokenizer.bos_token_id) == 1
    assert student_tokenizer.bos_token_id not in row["input_ids"][:-1]


# A token that straddles the boundary is a response token: the response then starts with the prompt characters it
# carries. Each case: prompt, completion, and per side (student, teacher) the text the response tokens decode to.
STRADDLING = [
    ("Answer: ", "four", (" four", " four")),  # both merge the prompt's trailing space into the first word
    ("1", "23 apples", ("123 apples", "23 apples")),  # GPT-2 merges digits, Llama-2 splits them
    ("Say hi.\n", "\n\tHi", ("\n\n\tHi", "\n\tHi")),  # GPT-2 merges the newlines
]


def test_a_token_straddling_the_boundary_belongs_to_the_response(student_tokenizer, teacher_tokenizer):
    rows = [{"prompt": prompt, "completion": completion} for prompt, completion, _ in STRADDLING]
    prepared = prepare(rows, student_tokenizer, teacher_tokenizer)
    for (prompt, completion, expected), row in zip(STRADDLING, prepared):
        for prefix, tokenizer, response_text in zip(SIDES, (student_tokenizer, teacher_tokenizer), expected):
            prompt_ids = check_response_is(row, prefix, tokenizer, response_text)
            assert text_of(tokenizer, prompt_ids) + response_text == prompt + completion


def test_conversations_use_each_tokenizers_own_chat_template(templated_tokenizers):
    student, teacher = templated_tokenizers
    question = {"role": "user", "content": "What is the capital of France?"}
    answer = {"role": "assistant", "content": "Paris."}
    student_prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    teacher_prompt = "<s>[INST] What is the capital of France? [/INST]"

    for rows in ([{"messages": [question, answer]}], [{"prompt": [question], "completion": [answer]}]):
        (row,) = prepare(rows, student, teacher)
        # Student: the turn's end markup belongs to the response, and EOS is appended after it.
        student_full = student(student_prompt + "Paris.<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == student_full + [student.eos_token_id]
        prompt_ids, _ = split_at_response(row, "")
        assert prompt_ids == student(student_prompt, add_special_tokens=False)["input_ids"]
        # Teacher: the template's BOS and final EOS are parsed as special tokens and no second EOS is added.
        teacher_full = teacher(teacher_prompt + " Paris. </s>", add_special_tokens=False)["input_ids"]
        assert row["teacher_input_ids"] == teacher_full
        assert teacher_full[0] == teacher.bos_token_id and teacher_full.count(teacher.eos_token_id) == 1
        prompt_ids, _ = split_at_response(row, "teacher_")
        assert prompt_ids == teacher(teacher_prompt, add_special_tokens=False)["input_ids"]


def test_a_long_conversation_keeps_the_start_of_its_prompt_on_each_side(templated_tokenizers):
    question = {"role": "user", "content": "Summarise: " + "the river runs to the sea. " * 30}
    answer = {"role": "assistant", "content": "Rivers reach the sea."}
    (row,) = prepare([{"messages": [question, answer]}], *templated_tokenizers, max_length=48, max_prompt_length=24)
    for prefix, tokenizer in zip(SIDES, templated_tokenizers):
        rendered_prompt = tokenizer.apply_chat_template([question], tokenize=False, add_generation_prompt=True)
        rendered_full = tokenizer.apply_chat_template([question, answer], tokenize=False)
        whole_prompt = tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
        whole = tokenizer(rendered_full, add_special_tokens=False)["input_ids"]
        if whole[-1] != tokenizer.eos_token_id:
            whole.append(tokenizer.eos_token_id)
        prompt_ids, response_ids = split_at_response(row, prefix)
        assert 20 <= len(prompt_ids) <= 24 and len(prompt_ids) + len(response_ids) <= 48
        assert prompt_ids == whole_prompt[: len(prompt_ids)]
        assert response_ids == whole[len(whole_prompt) :]


def test_a_tokenizer_without_a_chat_template_is_named(templated_tokenizers, teacher_tokenizer):
    student, _ = templated_tokenizers
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    with pytest.raises(ValueError, match=r"teacher tokenizer \(.*llama2\) has no chat template.*chat_template ="):
        prepare(rows, student, teacher_tokenizer)


def test_a_slow_tokenizer_is_refused(student_tokenizer):
    from transformers import ByT5Tokenizer

    with pytest.raises(ValueError, match="teacher tokenizer .* slow .*fast"):
        prepare([{"prompt": "a", "completion": "b"}], student_tokenizer, ByT5Tokenizer())


def test_messages_must_end_with_the_assistant(templated_tokenizers):
    rows = [{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello"}]}]
    with pytest.raises(ValueError, match=r"Row 0: .*last role 'assistant'.*\['assistant', 'user'\]"):
        prepare(rows, *templated_tokenizers)


def test_dskd_rows_train_on_the_first_reference(student_tokenizer, teacher_tokenizer):
    rows = [{"instruction": "Name a colour.", "prompt": "### Response:\n", "output": ["Blue.", "Red."]}]
    (row,) = prepare(rows, student_tokenizer, teacher_tokenizer)
    check_response_is(row, "", student_tokenizer, "Blue.")
    check_response_is(row, "teacher_", teacher_tokenizer, "Blue.")
    assert set(row) == {f"{p}{name}" for p in SIDES for name in ("input_ids", "attention_mask", "labels")}


def test_a_long_prompt_keeps_its_start_and_the_same_characters_on_both_sides(student_tokenizer, teacher_tokenizer):
    prompt = "Instruction: " + " ".join(f"item{i}, 東京 🚀" for i in range(200)) + "\n### Response:\n"
    completion = "Done."
    (row,) = prepare(
        [{"prompt": prompt, "completion": completion}], student_tokenizer, teacher_tokenizer, max_length=64,
        max_prompt_length=16,
    )
    kept = []
    for prefix, tokenizer in zip(SIDES, (student_tokenizer, teacher_tokenizer)):
        prompt_ids = check_response_is(row, prefix, tokenizer, completion)
        assert len(prompt_ids) <= 16
        kept.append((len(prompt_ids), text_of(tokenizer, prompt_ids)))
    (student_count, student_text), (teacher_count, teacher_text) = kept
    assert student_text == teacher_text and prompt.startswith(student_text)
    assert max(student_count, teacher_count) >= 12  # cut as late as a boundary shared by both tokenizers allows


def test_a_long_response_is_cut_at_the_same_character_and_loses_its_eos(student_tokenizer, teacher_tokenizer):
    completion = "The cat sat on the mat, then 猫 slept. " * 40
    (row,) = prepare(
        [{"prompt": "Story:\n", "completion": completion}], student_tokenizer, teacher_tokenizer, max_length=40,
        max_prompt_length=8,
    )
    responses = []
    for prefix, tokenizer in zip(SIDES, (student_tokenizer, teacher_tokenizer)):
        assert 36 <= len(row[f"{prefix}input_ids"]) <= 40
        prompt_ids, response_ids = split_at_response(row, prefix)
        assert tokenizer.eos_token_id not in response_ids
        full = text_of(tokenizer, prompt_ids + response_ids)
        assert full.startswith("Story:\n")
        responses.append(full[len("Story:\n") :])
    assert responses[0] == responses[1] and completion.startswith(responses[0]) and len(responses[0]) > 40


def test_dropped_rows_are_counted_in_one_warning(student_tokenizer, teacher_tokenizer):
    long_prompt = "one two three four five six seven eight nine ten eleven twelve\n"
    rows = [
        {"prompt": "Hi\n", "completion": "!"},
        {"prompt": "Hi\n", "completion": ""},
        {"prompt": "Hi\n", "completion": "  \n"},
        # The prompt fills its 10 tokens; "!" + EOS (at least 2 tokens) cannot fit in the one left.
        {"prompt": long_prompt, "completion": "!"},
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare(rows, student_tokenizer, teacher_tokenizer, max_length=11, max_prompt_length=10)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert messages == [
        "Dropped 3 of 4 rows: 2 with an empty completion, 1 whose response was entirely truncated away "
        "(max_length=11, max_prompt_length=10)."
    ]
    (row,) = prepared
    check_response_is(row, "", student_tokenizer, "!")


def test_a_dataset_with_no_usable_row_is_an_error(student_tokenizer, teacher_tokenizer):
    with pytest.raises(ValueError, match=r"No usable rows\. Dropped 2 of 2 rows: 2 with an empty completion"):
        prepare([{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": " "}], student_tokenizer,
                teacher_tokenizer)
    empty = datasets.Dataset.from_dict({"prompt": [], "completion": []})
    with pytest.raises(ValueError, match="no rows"):
        prepare_distillation_dataset(empty, student_tokenizer, teacher_tokenizer)


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["prompt", "completion"], "prompt-completion"),
        (["messages", "id"], "messages"),
        (["instruction", "prompt", "input", "output"], "dskd"),
    ],
)
def test_formats_are_detected_from_the_columns(columns, expected):
    assert check_dataset_columns(columns) == expected


@pytest.mark.parametrize(
    "columns, message",
    [
        (["text"], r"columns: \['text'\]\) looks like language-modeling text"),
        (["question", "answer"], r"columns: \['question', 'answer'\]\) has no usable columns"),
        (["prompt", "completion", "output"], "matches several formats"),
    ],
)
def test_unusable_columns_name_the_columns_and_the_formats(columns, message):
    with pytest.raises(ValueError, match=message) as error:
        check_dataset_columns(columns)
    for name in ("'prompt-completion'", "'messages'", "'dskd'", "`output`"):
        assert name in str(error.value)


def test_bad_columns_fail_before_any_tokenizer_is_used():
    dataset = datasets.Dataset.from_list([{"text": "hello"}])
    with pytest.raises(ValueError, match="Accepted formats"):
        prepare_distillation_dataset(dataset, student_tokenizer=None, teacher_tokenizer=None)


def test_prompt_budget_must_leave_room_for_a_response(student_tokenizer, teacher_tokenizer):
    with pytest.raises(ValueError, match=r"max_prompt_length \(64\) must be positive and smaller than max_length"):
        rows = [{"prompt": "a", "completion": "b"}]
        prepare(rows, student_tokenizer, teacher_tokenizer, max_length=64, max_prompt_length=64)


def test_collator_right_pads_each_side_to_its_own_width():
    rows = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7],
         "teacher_input_ids": [1, 8], "teacher_attention_mask": [1, 1], "teacher_labels": [-100, 8]},
        {"input_ids": [9], "attention_mask": [1], "labels": [9],
         "teacher_input_ids": [1, 2, 3, 4, 5], "teacher_attention_mask": [1] * 5,
         "teacher_labels": [-100, 2, 3, 4, 5]},
    ]
    batch = DistillationCollator(student_pad_token_id=0, teacher_pad_token_id=2)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]
    assert batch["teacher_input_ids"].tolist() == [[1, 8, 2, 2, 2], [1, 2, 3, 4, 5]]
    assert batch["teacher_attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1] * 5]
    assert batch["teacher_labels"].tolist() == [[-100, 8, -100, -100, -100], [-100, 2, 3, 4, 5]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())

    padded = DistillationCollator(0, 2, pad_to_multiple_of=4)(rows)
    assert padded["input_ids"].shape == (2, 4) and padded["teacher_input_ids"].shape == (2, 8)
    assert padded["teacher_labels"][0, 2:].eq(-100).all()


def test_collator_needs_both_pad_tokens():
    with pytest.raises(ValueError, match=r"teacher tokenizer has no pad token.*pad_token"):
        DistillationCollator(0, None)


@pytest.mark.slow
def test_parallel_preparation_gives_the_same_rows(student_tokenizer, teacher_tokenizer):
    rows = [{"prompt": f"Question {i}:\n", "completion": f"Answer {i} 答案"} for i in range(8)]
    serial = prepare(rows, student_tokenizer, teacher_tokenizer)
    parallel = prepare(rows, student_tokenizer, teacher_tokenizer, num_proc=2)
    assert serial.to_list() == parallel.to_list()


def test_dolly_rows_load_and_tokenize(student_tokenizer, teacher_tokenizer, tmp_path):
    files = [str(DATA / "dolly" / name) for name in ("train.jsonl", "dev.jsonl")]
    dataset = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(tmp_path))
    assert check_dataset_columns(dataset.column_names) == "dskd"
    prepared = prepare_distillation_dataset(dataset, student_tokenizer, teacher_tokenizer)
    assert len(prepared) == len(dataset) == 15
    whole_responses = 0
    for source, row in zip(dataset, prepared):
        for prefix, tokenizer in zip(SIDES, (student_tokenizer, teacher_tokenizer)):
            prompt_ids, response_ids = split_at_response(row, prefix)
            assert len(prompt_ids) <= 256 and len(prompt_ids) + len(response_ids) <= 512
            if response_ids[-1] == tokenizer.eos_token_id:  # not truncated
                check_response_is(row, prefix, tokenizer, source["output"])
                whole_responses += 1
    assert whole_responses > 0
