"""EditorConfig: --set values typed from each field's annotation, the three groups `patcher config` shows, and
REFERENCE_SETTINGS naming only the deviations from the paper."""
from dataclasses import fields

import pytest

from patcher import EditorConfig
from patcher.engine.config import GROUPS, REFERENCE_SETTINGS


def test_overrides_are_typed_from_the_field_and_optional_ones_take_none():
    parsed = EditorConfig.parse_overrides(["shift_guard=none", "subject_layer=9", "keep_failed=true", "lr=0.1",
                                           "activation=relu", "phrasings=3"])
    assert parsed == {"shift_guard": None, "subject_layer": 9, "keep_failed": True, "lr": 0.1,
                      "activation": "relu", "phrasings": 3}
    assert EditorConfig(**parsed).shift_guard is None
    with pytest.raises(ValueError, match="lr takes float, got 'fast'"):
        EditorConfig.parse_overrides(["lr=fast"])
    with pytest.raises(ValueError, match="unknown setting 'margin'"):
        EditorConfig.parse_overrides(["margin=1"])


def test_the_groups_cover_every_field_in_order_and_the_deviations_hold_the_reference_settings():
    names = [f.name for f in fields(EditorConfig)]
    starts = [names.index(first) for first in GROUPS]
    assert starts[0] == 0 and starts == sorted(starts)
    deviations = set(names[starts[1]:starts[2]])
    assert set(REFERENCE_SETTINGS) <= deviations
    assert all(len(text) < 400 for text in EditorConfig.help().values())
