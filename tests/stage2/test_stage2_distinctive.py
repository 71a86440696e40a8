"""Distinctive words D_i and the loss L_dist."""

import math

import torch

from distinctad.train.models.distinctive import (
    STOP_WORDS,
    content_words,
    distinctive_targets,
    distinctive_word_loss,
    distinctive_words,
    first_subtoken_id,
    pad_targets,
)

WINDOW = [
    "Ana opens the red door.",
    "Bo opens the blue door.",
    "Ana's dog barks at Bo, and the dog runs.",
    "",  # padding clip
]


def test_distinctive_words_hand_made_window():
    assert distinctive_words(WINDOW) == [["red"], ["blue"], ["dog", "barks", "runs"], []]


def test_cased_forms_and_content_words():
    assert distinctive_words(["The Red door", "a blue DOOR"], cased=True) == [["Red"], ["blue"]]
    assert content_words("Ana's 2 dogs and a cat, then Ana leaves.") == ["ana", "dogs", "cat", "leaves"]
    assert {"the", "and", "then", "he", "she's"} <= STOP_WORDS


def test_stop_words_in_other_ads_still_count_as_present():
    # "up" is a stop word, so it is never distinctive; "looks" occurs in both ADs, so in neither D_i.
    assert distinctive_words(["She looks up.", "He looks at Ana."]) == [[], ["ana"]]


def test_targets_are_first_subtokens(tokenizer):
    tid = first_subtoken_id("kitchen", tokenizer)
    assert " kitchen".startswith(tokenizer.decode([tid]))
    assert tokenizer.decode([tid]).strip()  # never a bare space token
    targets = distinctive_targets([WINDOW], tokenizer)
    assert len(targets) == 4 and targets[3] == []
    assert targets[0] == [first_subtoken_id("red", tokenizer)]
    assert targets[2] == [first_subtoken_id(w, tokenizer) for w in ("dog", "barks", "runs")]
    padded = pad_targets(targets)
    assert padded.shape == (4, 3) and (padded[3] == -1).all() and padded[0, 1:].eq(-1).all()


def test_loss_values():
    vocab = 10
    targets = torch.tensor([[3, 5], [-1, -1], [7, -1]])
    uniform = torch.zeros(3, vocab)
    torch.testing.assert_close(distinctive_word_loss(uniform, targets), torch.tensor(math.log(vocab)))
    # Clip 0: the target gets the top score -> lower loss; clip 1 (empty D_i) is not averaged in.
    scores = torch.zeros(3, vocab)
    scores[0, 3] = scores[0, 5] = 4.0
    scores[2, 7] = 4.0
    better = distinctive_word_loss(scores, targets)
    assert better < math.log(vocab)
    logp0 = torch.log_softmax(scores[0], -1)
    logp2 = torch.log_softmax(scores[2], -1)
    expected = (-(logp0[3] + logp0[5]) / 2 - logp2[7]) / 2
    torch.testing.assert_close(better, expected)
    wrong = torch.zeros(3, vocab)
    wrong[:, 0] = 4.0  # a non-target word gets the top score
    assert distinctive_word_loss(wrong, targets) > math.log(vocab) > better


def test_loss_without_targets_is_zero_and_attached():
    scores = torch.randn(2, 5, requires_grad=True)
    loss = distinctive_word_loss(scores, torch.full((2, 1), -1))
    assert loss.item() == 0.0 and loss.requires_grad
