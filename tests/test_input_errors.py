"""User mistakes and bad answers found by the fault suite (tests/faults), pinned as unit tests:
a config in another encoding names the file, line and encoding; answers with wrong types or
boxes outside the image never pass as labels; a bad token or a page that is not the API is
one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pseudolabel.config import ConfigError, load_config
from pseudolabel.data.formats import read_csv_labels
from pseudolabel.review import convert
from pseudolabel.review.decode import Decoder
from pseudolabel.types import Item
from pseudolabel.utils import read_text_utf8


def test_read_text_utf8_names_file_line_and_encoding(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_bytes("path,label\na.png,0\ncafé.png,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels\.csv:3: not UTF-8 text \(byte 0xe9 at offset 22") as e:
        read_text_utf8(f)
    assert "save the file as UTF-8" in str(e.value) and "iconv -f latin1 -t utf-8 labels.csv" in str(e.value)
    f.write_bytes("\ufeffpath,label\n".encode("utf-8"))
    assert read_text_utf8(f) == "path,label\n"  # a byte-order mark is fine


def test_latin1_label_csv_and_config_are_named(tmp_path: Path) -> None:
    csv = tmp_path / "seed.csv"
    csv.write_bytes("path,label\ncafé.png,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"seed\.csv:2: not UTF-8"):
        read_csv_labels(csv)
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("project: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c\.yaml:1: not UTF-8 text"):
        load_config(cfg, environ={})


def _choices(value: object) -> list[dict[str, object]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": value}]


@pytest.mark.parametrize("value", [{"choices": "3"}, {"choices": "12"}, {"choices": [3]}, {"choices": [None]},
                                   ["3"], "3"])
def test_choices_of_wrong_type_are_not_a_label(value: object) -> None:
    with pytest.raises(ValueError, match="is not a list of class names"):
        convert.label_from_choices(_choices(value))


def _rect(x: float, y: float, w: float, h: float) -> dict[str, object]:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 100,
            "original_height": 50, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                                             "rectanglelabels": ["cat"]}}


def test_boxes_outside_the_image_are_clipped_or_refused(tmp_path: Path) -> None:
    dec = Decoder(("cat",), "detect", tmp_path, None)
    item = Item(id="x", path=tmp_path / "x.png", width=100, height=50)
    warnings: list[str] = []
    _, boxes = dec.result([_rect(10, 10, 20, 20)], item, warnings)
    assert (boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2) == (10, 5, 30, 15) and warnings == []
    _, boxes = dec.result([_rect(90, -10, 20, 40)], item, warnings)  # reaches over two edges
    assert (boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2) == (90, 0, 100, 15)
    assert len(warnings) == 1 and "clipped to [90.0, 0.0, 100.0, 15.0] px" in warnings[0]
    with pytest.raises(ValueError, match=r"lies outside the 100x50 image"):
        dec.result([_rect(150, 150, 20, 20)], item, [])
    with pytest.raises(ValueError, match="has no area"):
        dec.result([_rect(10, 10, 0, 20)], item, [])


def test_a_success_status_without_the_api_is_a_protocol_error() -> None:
    from label_studio_sdk.core.api_error import ApiError

    from pseudolabel.review.transport import LabelStudioProtocolError, RetryPolicy, call

    def page() -> None:
        raise ApiError(status_code=200, headers={"set-cookie": "sessionid=s3cret"}, body="<html>Please log in</html>")

    with pytest.raises(LabelStudioProtocolError) as e:
        call("GET /api/version", page, url="http://127.0.0.1:9", policy=RetryPolicy(retry_seconds=0))
    assert str(e.value) == ("the server at http://127.0.0.1:9 answered GET /api/version with an HTML page, not "
                            "Label Studio's API: is label_studio.url the Label Studio server?")


@pytest.mark.parametrize("claims", ["eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9",              # no expiry
                                    "eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6MTAwfQ"])  # expired in 1970
def test_a_bad_personal_access_token_is_one_line(tmp_path: Path, claims: str) -> None:
    """The SDK checks a personal access token when it is built: that is an auth error naming
    the token's variable, like the server's own 401 (nothing is sent: no server needed)."""
    from pseudolabel.review.client import LabelStudioClient
    from pseudolabel.review.transport import LabelStudioAuthError

    token = f"eyJhbGciOiJIUzI1NiJ9.{claims}.c2lnbmF0dXJl"
    client = LabelStudioClient("http://127.0.0.1:9", token, "bad token", ["a", "b"], images_root=tmp_path,
                               token_env="MY_LS_TOKEN")
    with pytest.raises(LabelStudioAuthError, match=r"refused the token for connect \(HTTP 401: API key .*"
                                                   r"check the environment variable MY_LS_TOKEN") as e:
        client.check_server()
    assert token not in str(e.value) and "headers" not in str(e.value)
