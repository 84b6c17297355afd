"""Reasoning rewards and the JSON parser against hand-computed cases (no Ray, no model)."""
import json

import numpy as np
import pytest

from reaemb_ray.reasoning.prompts import Parsed, answer_value, parse_response, user_message
from reaemb_ray.reasoning.rewards import RewardContext, accuracy_raw, minmax_to_unit, score

CTX = RewardContext("rating", {1.0: 0.1, 3.0: 0.25, 4.0: 0.4, 5.0: 0.25}, (1.0, 5.0), penalty_over=0.5,
                    penalty_under=0.25)


def reply(think: str, answer) -> str:
    return json.dumps({"think": think, "answer": answer})


def test_parse_accepts_one_json_object_with_both_keys():
    assert parse_response('{"think": "x", "answer": 4}') == Parsed(True, "x", 4)
    assert parse_response('```json\n{"think": "x", "answer": "4"}\n```') == Parsed(True, "x", "4")
    assert parse_response('  {"answer": 2, "think": "y"}\n```') == Parsed(True, "y", 2)  # a dangling fence
    assert parse_response('{"think": {"a": 1}, "answer": 3}') == Parsed(True, '{"a": 1}', 3)
    for bad in ('{"think": "x"}', '{"answer": 3}', 'JSON {"think": "x", "answer": 4}', "[1, 2]", "",
                '{"think": "x", "answer": 4} and more', '{"think": "x", "answer": 4'):
        assert parse_response(bad) == Parsed(False), bad


def test_answer_values():
    assert answer_value("rating", 4) == 4.0 and answer_value("rating", " 3.5 ") == 3.5
    assert answer_value("rating", "four") is None and answer_value("rating", True) is None
    assert answer_value("rating", [4]) is None and answer_value("rating", "nan") is None
    assert answer_value("next_item", "Yes") == 1.0 and answer_value("next_item", "no") == 0.0
    assert answer_value("next_item", True) == 1.0 and answer_value("next_item", "maybe") is None


def test_accuracy_raw_hand_computed():
    # e = 0: exp(0) / sqrt(0.4)
    assert accuracy_raw(4, 4, CTX) == pytest.approx(1.5811388300841895)
    # over-prediction e = +1: (e^-1 - 0.5 * 1) / sqrt(0.4)
    assert accuracy_raw(5, 4, CTX) == pytest.approx(-0.208900945816255)
    # under-prediction e = -1 costs less: (e^-1 - 0.25 * 1) / sqrt(0.4)
    assert accuracy_raw(3, 4, CTX) == pytest.approx(0.1863837617047924)
    # a prediction off the scale is clipped to 5 first: e = 4, (e^-16 - 0.5 * 4) / sqrt(0.1)
    assert accuracy_raw(9, 1, CTX) == pytest.approx(-6.324554964469289)
    # the rarer true class weighs more: the same exact hit on class 1 vs class 4
    assert accuracy_raw(1, 1, CTX) / accuracy_raw(4, 4, CTX) == pytest.approx(2.0)  # sqrt(0.4 / 0.1)


def test_minmax_to_unit():
    v = np.array([1.5811388300841895, -0.208900945816255, 0.1863837617047924, -6.324554964469289, 123.0])
    ok = np.array([True, True, True, True, False])
    np.testing.assert_allclose(minmax_to_unit(v, ok), [1.0, 0.5471517560840344, 0.6471517605854418, -1.0, -1.0])
    np.testing.assert_array_equal(minmax_to_unit(np.array([2.0, 2.0, 0.0]), np.array([True, True, False])),
                                  [0.0, 0.0, -1.0])
    np.testing.assert_array_equal(minmax_to_unit(np.zeros(2), np.zeros(2, bool)), [-1.0, -1.0])


def test_score_two_prompts_hand_computed():
    long_think = "x" * 150  # analysis (150 - 100) / 100 = 0.5
    texts = [[reply(long_think, 4), reply("short", 5), "not json"],
             [reply("y" * 260, "3"), reply("z" * 99, "three"), '{"think": "no answer key"}']]
    s = score(texts, [4, 1], CTX, {"format": 1.0, "accuracy": 2.0, "analysis": 0.5})
    np.testing.assert_array_equal(s.parts["format"], [[1, 1, 0], [1, 1, 0]])
    np.testing.assert_allclose(s.parts["analysis"], [[0.5, 0, 0], [1.0, 0, 0]])
    # parseable answers: (4 vs 4) 1.58114, (5 vs 4) -0.20890, (3 vs 1: e = 2, (e^-4 - 1.0) / sqrt(0.1)) -3.10436
    raw = np.array([1.5811388300841895, -0.208900945816255, (np.exp(-4) - 1.0) / np.sqrt(0.1)])
    assert raw[2] == pytest.approx(-3.1043585)
    scaled = 2 * (raw - raw.min()) / (raw.max() - raw.min()) - 1
    np.testing.assert_allclose(s.parts["accuracy"], [[scaled[0], scaled[1], -1], [scaled[2], -1, -1]])
    np.testing.assert_allclose(s.total, s.parts["format"] + 2 * s.parts["accuracy"] + 0.5 * s.parts["analysis"])
    assert s.total[0, 0] == pytest.approx(1 + 2 * 1 + 0.25)
    assert s.valid_share == pytest.approx(4 / 6) and s.answered_share == pytest.approx(3 / 6)
    assert s.accuracy_base == pytest.approx((1 + np.exp(-1) + np.exp(-4)) / 6)  # errors 0, +1, +2
    assert s.abs_error == pytest.approx(1.0)


def test_next_item_task_binary_accuracy():
    ctx = RewardContext("next_item", {0.0: 0.5, 1.0: 0.5}, (0.0, 1.0))
    s = score([[reply("a", "yes"), reply("b", "no")]], [1], ctx, {"accuracy": 1.0})
    # hit: 1 / sqrt(.5); miss e = -1: (e^-1 - 0.25) / sqrt(.5) -> min-max: 1, -1
    np.testing.assert_allclose(s.parts["accuracy"], [[1.0, -1.0]])


def test_score_rejects_bad_input_with_one_line():
    with pytest.raises(KeyError, match="unknown reward.*'style'"):
        score([["x"]], [4], CTX, {"style": 1.0})
    with pytest.raises(ValueError, match="truth classes \\[2.0\\]"):
        score([["x", "y"]], [2], CTX, {"format": 1.0})
    with pytest.raises(ValueError, match="M x G"):
        score([["x", "y"], ["z"]], [4, 4], CTX, {"format": 1.0})


def test_prompts_name_the_question_and_scale():
    with_history = user_message("rating", "title is Heat", [("title is Fargo", 4.0), ("title is Up", None)], "movie")
    assert "- title is Fargo -> rated 4" in with_history and "- title is Up\n" in with_history
    assert "rating this user gives" in with_history and '"answer": <rating 1-5>' in with_history
    alone = user_message("rating", "title is Heat", [], "movie", (0.5, 5.0))
    assert "typical user" in alone and "0.5-5 scale" in alone and "recent" not in alone
    assert '"yes" or "no"' in user_message("next_item", "title is Heat", [("title is Up", None)], "movie")
    with pytest.raises(ValueError, match="reason.task"):
        user_message("stars", "t", [], "movie")
