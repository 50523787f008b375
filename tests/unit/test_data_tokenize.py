"""Chat templates, tokenizing pairs (overflow policies, end-of-assistant), storage round trip and collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rmrun.data.formats import DataError, Message, PreferencePair, read_pairs
from rmrun.data.template import ChatTemplate, load_chat_template, render_conversations
from rmrun.data.tokenize import TokenizedPairs, collate, tokenize_pairs

DATA_DIR = Path(__file__).parents[1] / "data"
COLOSSAL_TEMPLATE = DATA_DIR / "colossalchat_template_tiny-llama.json"
COLOSSAL_SAMPLE = DATA_DIR / "colossalchat_preference_sample.jsonl"

UNK, BOS, EOS, PAD = 0, 1, 2, 3
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = "the a sky is blue green red what colour why did chicken cross road to get other side one two three four five".split()

# Emits bos itself, like Llama-style templates, and nothing after the last eos but a newline.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
)


def build_tiny_tokenizer(*, chat_template: str | None, adds_bos: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: one token per word, so lengths in tests are easy to predict."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIAL_TOKENS)
    # Like Llama tokenizers, add a bos when asked for special tokens, so a doubled bos would show.
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(chat_template=BOS_TEMPLATE)


@pytest.fixture(scope="module")
def colossal_template() -> ChatTemplate:
    return load_chat_template(str(COLOSSAL_TEMPLATE))


def make_pair(prompt: str, chosen: str, rejected: str, *, source: str = "pairs.jsonl:1") -> PreferencePair:
    return PreferencePair(
        prompt=(Message("user", prompt),) if prompt else (),
        chosen=(Message("assistant", chosen),),
        rejected=(Message("assistant", rejected),),
        source=source,
    )


def many_pairs(count: int) -> list[PreferencePair]:
    """Pairs of varied lengths so offsets and padding are exercised."""
    return [
        make_pair(
            " ".join(["what colour is the sky"] * (1 + i % 3)),
            " ".join(["blue"] * (1 + i % 7)),
            " ".join(["green red"] * (1 + i % 5)),
            source=f"pairs.jsonl:{i + 1}",
        )
        for i in range(count)
    ]


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- templates


def test_colossalchat_template_file_loads_as_is(colossal_template):
    assert colossal_template.end_of_assistant == "</s>"
    assert colossal_template.system_message.startswith("A chat between a curious human")
    assert "<|assistant|>" in colossal_template.jinja


def test_jinja_template_file(tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(BOS_TEMPLATE)
    assert load_chat_template(str(path)) == ChatTemplate(jinja=BOS_TEMPLATE)


def test_template_text_given_inline():
    assert load_chat_template(BOS_TEMPLATE) == ChatTemplate(jinja=BOS_TEMPLATE)
    with pytest.raises(DataError, match=r"\[data\]\.chat_template: invalid Jinja chat template"):
        load_chat_template("{% for m in messages %}{{ m }}")


def test_tokenizer_without_eos_reads_the_reward_at_the_end_of_the_rendering():
    bare = build_tiny_tokenizer(chat_template=None, adds_bos=False)
    bare.eos_token = None
    plain = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    result = tokenize_pairs(
        [make_pair("why", "one two", "three")],
        bare,
        max_length=64,
        overflow="error",
        template=ChatTemplate(jinja=plain),
    )
    assert result.chosen(0).tolist() == ids_of(bare, "why one two")
    assert result.rejected(0).tolist() == ids_of(bare, "why three")


def test_encoder_text_gets_the_tokenizers_own_special_tokens():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", "user", "assistant", *WORDS]
    encoder = _bert_tokenizer(vocab)
    cls, sep = encoder.cls_token_id, encoder.sep_token_id
    result = tokenize_pairs(
        [make_pair("why", "one two", "three")],
        encoder,
        max_length=64,
        overflow="error",
        template=None,
        family="encoder",
    )
    expected = encoder("user: why\nassistant: one two")["input_ids"]
    assert result.chosen(0).tolist() == expected and expected[0] == cls and expected[-1] == sep
    truncated = tokenize_pairs(
        [make_pair("why " * 20, "one two", "three")],
        encoder,
        max_length=6,
        overflow="truncate",
        template=None,
        family="encoder",
    )
    assert truncated.chosen(0).tolist()[0] == cls  # [CLS] kept, the end of the response kept
    assert truncated.chosen(0).tolist()[1:] == expected[-5:]


def _bert_tokenizer(vocab: list[str]):
    import tempfile

    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as directory:
        vocab_file = Path(directory) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        return BertTokenizerFast(vocab_file=str(vocab_file))


def test_no_template_path_gives_none():
    assert load_chat_template(None) is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{not json", r"bad\.json:1: invalid JSON"),
        ("bad.json", json.dumps({"system_message": "x"}), r'bad\.json: missing key "chat_template"'),
        ("bad.json", json.dumps({"chat_template": 3}), r'bad\.json: "chat_template" must be a string'),
        ("bad.jinja", "{% for m in messages %}{{ m }}", r"bad\.jinja: invalid Jinja chat template"),
        ("bad.txt", "{{ messages }}", r"bad\.txt: unknown chat template file type"),
    ],
)
def test_bad_template_file_names_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_chat_template(str(path))


def test_missing_template_file(tmp_path):
    with pytest.raises(DataError, match=r"gone\.json: file not found"):
        load_chat_template(str(tmp_path / "gone.json"))


def test_system_message_is_prepended_only_when_missing(tokenizer, colossal_template):
    without_system = (Message("user", "hi"), Message("assistant", "one"))
    with_system = (Message("system", "Own rules."), *without_system)
    plain, own = render_conversations(tokenizer, [without_system, with_system], template=colossal_template)
    assert plain.startswith("<|system|>\nA chat between a curious human")
    assert own.startswith("<|system|>\nOwn rules.</s>")
    assert "A chat between" not in own


def test_tokenizer_without_chat_template_needs_data_chat_template():
    bare = build_tiny_tokenizer(chat_template=None)
    with pytest.raises(DataError, match=r"no chat_template; set data\.chat_template"):
        tokenize_pairs([make_pair("hi", "one", "two")], bare, max_length=64, overflow="error", template=None)


def test_template_error_names_the_pair(tokenizer):
    strict = ChatTemplate(
        jinja="{% if messages[0]['role'] != 'system' %}{{ raise_exception('need a system turn') }}{% endif %}"
    )
    with pytest.raises(DataError, match=r"pairs\.jsonl:9: the chat template failed .*need a system turn"):
        tokenize_pairs(
            [make_pair("hi", "one", "two", source="pairs.jsonl:9")],
            tokenizer,
            max_length=64,
            overflow="error",
            template=strict,
        )


# --------------------------------------------------------------------------- tokenizing


def test_tokenizer_chat_template_with_bos_is_not_doubled_and_ends_with_eos(tokenizer):
    assert tokenizer("blue")["input_ids"] == [BOS, tokenizer.convert_tokens_to_ids("blue")]  # the fixture does add bos
    result = tokenize_pairs(
        [make_pair("what colour is the sky", "blue", "green")],
        tokenizer,
        max_length=64,
        overflow="error",
        template=None,
    )
    expected_chosen = [BOS, *ids_of(tokenizer, "<|user|>\nwhat colour is the sky</s>\n<|assistant|>\nblue</s>")]
    assert result.chosen(0).tolist() == expected_chosen
    assert result.chosen(0)[1] != BOS
    assert result.rejected(0)[-1] == EOS
    assert result.stats["pairs"] == 1 and result.stats["tokens"] == len(result.chosen_ids) + len(result.rejected_ids)


def test_tokens_after_the_last_end_of_assistant_are_removed(tokenizer):
    trailing = ChatTemplate(jinja=BOS_TEMPLATE + "{{ '<|assistant|>\n' }}the end")
    result = tokenize_pairs(
        [make_pair("why", "one", "two")], tokenizer, max_length=64, overflow="error", template=trailing
    )
    for sequence in (result.chosen(0), result.rejected(0)):
        assert sequence[-1] == EOS
        assert tokenizer.convert_tokens_to_ids("<|assistant|>") != sequence[-2]
    assert (
        result.chosen(0).tolist()
        == tokenize_pairs(
            [make_pair("why", "one", "two")],
            tokenizer,
            max_length=64,
            overflow="error",
            template=ChatTemplate(jinja=BOS_TEMPLATE),
        )
        .chosen(0)
        .tolist()
    )


def test_template_without_end_of_assistant_is_an_error(tokenizer):
    no_eos = ChatTemplate(jinja="{% for m in messages %}{{ m['content'] }} {% endfor %}")
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: .*no end-of-assistant token '</s>'"):
        tokenize_pairs([make_pair("hi", "one", "two")], tokenizer, max_length=64, overflow="error", template=no_eos)


def test_end_of_assistant_from_template_overrides_eos(tokenizer):
    closes_with_assistant_tag = ChatTemplate(
        jinja="{% for m in messages %}{{ m['content'] + ' <|assistant|>' }}{% endfor %} the end",
        end_of_assistant="<|assistant|>",
    )
    result = tokenize_pairs(
        [make_pair("hi", "one", "two")], tokenizer, max_length=64, overflow="error", template=closes_with_assistant_tag
    )
    assert result.chosen(0)[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")


def test_overflow_truncate_keeps_bos_and_the_end_of_the_response(tokenizer):
    long_answer = " ".join(["one two three four five"] * 10)
    pairs = [make_pair("what colour is the sky", long_answer, "blue"), make_pair("why", "one", "two")]
    full = tokenize_pairs(pairs, tokenizer, max_length=1000, overflow="error", template=None)
    result = tokenize_pairs(pairs, tokenizer, max_length=12, overflow="truncate", template=None)
    truncated = result.chosen(0)
    assert len(truncated) == 12
    assert truncated[0] == BOS
    assert truncated[1:].tolist() == full.chosen(0)[-11:].tolist()
    assert truncated[-1] == EOS
    assert result.rejected(0).tolist() == full.rejected(0).tolist()  # the short side is left alone
    assert result.chosen(1).tolist() == full.chosen(1).tolist()
    assert result.stats["truncated"] == 1 and result.stats["dropped"] == 0 and result.stats["pairs"] == 2


def test_overflow_truncate_without_bos_keeps_the_last_tokens(colossal_template):
    tokenizer = build_tiny_tokenizer(chat_template=None, adds_bos=False)
    long_answer = " ".join(["one two three"] * 10)
    pairs = [make_pair("why", long_answer, "two")]
    full = tokenize_pairs(pairs, tokenizer, max_length=1000, overflow="error", template=colossal_template)
    result = tokenize_pairs(pairs, tokenizer, max_length=8, overflow="truncate", template=colossal_template)
    assert full.chosen(0)[0] != BOS  # neither the template nor this tokenizer adds a bos
    assert result.chosen(0).tolist() == full.chosen(0)[-8:].tolist()


def test_overflow_drop_removes_the_pair_and_keeps_source_indices(tokenizer):
    pairs = [
        make_pair("why", "one", "two"),
        make_pair("why", " ".join(["one"] * 50), "two"),
        make_pair("what", "blue", "red"),
    ]
    result = tokenize_pairs(pairs, tokenizer, max_length=20, overflow="drop", template=None)
    assert len(result) == 2
    assert result.pair_index.tolist() == [0, 2]
    assert result.stats["dropped"] == 1 and result.stats["pairs"] == 2 and result.stats["truncated"] == 0
    assert result.lengths().max() <= 20


def test_overflow_drop_applies_when_only_rejected_is_too_long(tokenizer):
    pairs = [make_pair("why", "one", " ".join(["two"] * 50))]
    result = tokenize_pairs(pairs, tokenizer, max_length=20, overflow="drop", template=None)
    assert len(result) == 0 and result.stats["dropped"] == 1
    assert result.chosen_offsets.tolist() == [0]


def test_overflow_error_names_the_source_and_length(tokenizer):
    pairs = [make_pair("why", "one", "two"), make_pair("why", " ".join(["one"] * 50), "two", source="pairs.jsonl:2")]
    # chosen: <s> <|user|> why </s> <|assistant|> one*50 </s> = 56 tokens; rejected has 7.
    with pytest.raises(
        DataError, match=r"pairs\.jsonl:2: pair is 56 tokens long \(chosen 56, rejected 7\), over data\.max_length=20"
    ):
        tokenize_pairs(pairs, tokenizer, max_length=20, overflow="error", template=None)


def test_unknown_overflow_policy(tokenizer):
    with pytest.raises(ValueError, match="unknown overflow policy 'clip'"):
        tokenize_pairs([], tokenizer, max_length=20, overflow="clip", template=None)


def test_batches_are_stitched_together_exactly(tokenizer):
    pairs = many_pairs(25)
    one_batch = tokenize_pairs(pairs, tokenizer, max_length=64, overflow="error", template=None)
    small_batches = tokenize_pairs(pairs, tokenizer, max_length=64, overflow="error", template=None, batch_size=4)
    for name, array in one_batch.to_arrays().items():
        np.testing.assert_array_equal(array, small_batches.to_arrays()[name], err_msg=name)
    assert one_batch.pair_index.tolist() == list(range(25))


def test_no_pairs_gives_empty_arrays(tokenizer):
    result = tokenize_pairs([], tokenizer, max_length=64, overflow="error", template=None)
    assert len(result) == 0 and result.lengths().shape == (0, 2) and result.stats["pairs"] == 0


# --------------------------------------------------------------------------- storage


def test_round_trip_of_100_pairs_through_arrays_and_safetensors(tokenizer, tmp_path):
    original = tokenize_pairs(many_pairs(100), tokenizer, max_length=64, overflow="error", template=None)
    assert original.chosen_ids.dtype == np.int32 and original.chosen_offsets.dtype == np.int64
    path = tmp_path / "pairs.safetensors"
    safetensors.numpy.save_file(original.to_arrays(), str(path))
    restored = TokenizedPairs.from_arrays(safetensors.numpy.load_file(str(path)), original.stats)
    assert len(restored) == 100
    for name, array in original.to_arrays().items():
        assert restored.to_arrays()[name].dtype == array.dtype
        np.testing.assert_array_equal(restored.to_arrays()[name], array, err_msg=name)
    assert all(np.array_equal(restored.chosen(i), original.chosen(i)) for i in range(100))
    assert all(np.array_equal(restored.rejected(i), original.rejected(i)) for i in range(100))
    np.testing.assert_array_equal(restored.lengths(), original.lengths())
    assert restored.stats == original.stats


def test_a_subset_holds_exactly_the_pairs_it_names(tokenizer):
    original = tokenize_pairs(many_pairs(30), tokenizer, max_length=64, overflow="error", template=None)
    indices = np.array([29, 0, 7, 8, 15])
    part = original.subset(indices)
    assert len(part) == 5 and part.pair_index.tolist() == original.pair_index[indices].tolist()
    assert all(np.array_equal(part.chosen(i), original.chosen(j)) for i, j in enumerate(indices))
    assert all(np.array_equal(part.rejected(i), original.rejected(j)) for i, j in enumerate(indices))
    np.testing.assert_array_equal(part.lengths(), original.lengths()[indices])
    everything = original.subset(np.arange(30))
    for name, array in original.to_arrays().items():
        np.testing.assert_array_equal(everything.to_arrays()[name], array, err_msg=name)
    assert len(original.subset(np.array([], dtype=np.int64))) == 0


def test_from_arrays_rejects_a_wrong_dtype(tokenizer):
    arrays = tokenize_pairs(many_pairs(3), tokenizer, max_length=64, overflow="error", template=None).to_arrays()
    arrays["chosen_ids"] = arrays["chosen_ids"].astype(np.int64)
    with pytest.raises(ValueError, match="chosen_ids must be a 1-d int32 array"):
        TokenizedPairs.from_arrays(arrays, {})


# --------------------------------------------------------------------------- collate


def test_collate_pads_with_the_dedicated_pad_token(tokenizer):
    assert tokenizer.pad_token_id == PAD != tokenizer.eos_token_id
    tokenized = tokenize_pairs(many_pairs(6), tokenizer, max_length=64, overflow="error", template=None)
    batch = collate(tokenized, [0, 4, 2], pad_token_id=tokenizer.pad_token_id)
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    sequences = [tokenized.chosen(i) for i in (0, 4, 2)] + [tokenized.rejected(i) for i in (0, 4, 2)]
    assert input_ids.shape == mask.shape == (6, max(len(s) for s in sequences))
    for row, sequence in enumerate(sequences):
        length = len(sequence)
        assert input_ids[row, :length].tolist() == sequence.tolist()
        assert (input_ids[row, length:] == PAD).all()
        assert mask[row].sum().item() == length
        assert input_ids[row, mask[row].sum() - 1].item() == EOS  # the last real token, where the reward is read
    assert (input_ids == PAD).any()
    assert batch["pair_ids"].tolist() == [0, 4, 2]


def test_collate_pads_to_the_longest_in_the_batch_not_max_length(tokenizer):
    pairs = [
        make_pair("why", "one", "two"),
        make_pair("why", "one two", "three"),
        make_pair("why", " ".join(["one"] * 40), "two"),
    ]
    tokenized = tokenize_pairs(pairs, tokenizer, max_length=512, overflow="error", template=None)
    batch = collate(tokenized, [0, 1], pad_token_id=PAD)
    assert batch["input_ids"].shape[1] == max(tokenized.lengths()[[0, 1]].max(), 0) < 512
    assert batch["input_ids"].shape[1] < tokenized.lengths()[2].max()
    assert str(batch["input_ids"].dtype) == "torch.int64" and str(batch["attention_mask"].dtype) == "torch.int64"


def test_collate_rows_are_chosen_then_rejected(tokenizer):
    tokenized = tokenize_pairs(
        [make_pair("why", "one", "two")], tokenizer, max_length=64, overflow="error", template=None
    )
    batch = collate(tokenized, [0], pad_token_id=PAD)
    assert batch["input_ids"][0, : len(tokenized.chosen(0))].tolist() == tokenized.chosen(0).tolist()
    assert batch["input_ids"][1, : len(tokenized.rejected(0))].tolist() == tokenized.rejected(0).tolist()


def test_collate_keeps_source_pair_ids_after_drops(tokenizer):
    pairs = [
        make_pair("why", " ".join(["one"] * 50), "two"),
        make_pair("why", "one", "two"),
        make_pair("what", "blue", "red"),
    ]
    tokenized = tokenize_pairs(pairs, tokenizer, max_length=20, overflow="drop", template=None)
    assert collate(tokenized, [1, 0], pad_token_id=PAD)["pair_ids"].tolist() == [2, 1]


# --------------------------------------------------------------------------- the real ColossalChat sample


def test_real_colossalchat_sample_ends_with_end_of_assistant(tokenizer, colossal_template):
    pairs = list(read_pairs([str(COLOSSAL_SAMPLE)], format="colossalchat"))
    result = tokenize_pairs(pairs, tokenizer, max_length=4096, overflow="error", template=colossal_template)
    assert len(result) == 1 and result.stats["truncated"] == 0
    for sequence in (result.chosen(0), result.rejected(0)):
        assert sequence[-1] == EOS == tokenizer.convert_tokens_to_ids("</s>")
        # The template emits no bos; the tokenizer adds its own, once, as tokenizer(text) does.
        assert sequence[0] == BOS and (sequence == BOS).sum() == 1
        assert sequence[1] == tokenizer.convert_tokens_to_ids(
            "<|system|>"
        )  # the template's system message was prepended
    # Each turn (system, three context turns, the response) is closed by </s>.
    assert (result.chosen(0) == EOS).sum() == 5


def test_real_colossalchat_sample_truncated_still_ends_with_end_of_assistant(tokenizer, colossal_template):
    pairs = list(read_pairs([str(COLOSSAL_SAMPLE)], format="colossalchat"))
    result = tokenize_pairs(pairs, tokenizer, max_length=16, overflow="truncate", template=colossal_template)
    assert result.stats["truncated"] == 1
    for sequence in (result.chosen(0), result.rejected(0)):
        assert len(sequence) == 16
        assert sequence[-1] == EOS
