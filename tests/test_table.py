import pytest

from quantlib.table import Table


def test_rows_from_sequences_and_dicts_and_text_alignment():
    t = Table(["format", "bits", "max"], title="t")
    t.append(["e4m3", 8, 448.0])
    t.append({"format": "e2m1", "bits": 4, "max": 6.0})
    assert t.column("bits") == [8, 4]
    assert t.to_dicts()[1] == {"format": "e2m1", "bits": 4, "max": 6.0}
    lines = str(t).splitlines()
    assert lines[0] == "t"
    assert lines[3].endswith("448.0000") and lines[4].endswith("  6.0000")
    assert len(t) == 2


def test_large_small_and_special_floats():
    t = Table(["v"], [[3.4028e38], [2.0 ** -149], [float("nan")], [0.0]], digits=3)
    cells = [r[0] for r in t._cells()]
    assert cells == ["3.4e+38", "1.4e-45", "nan", "0.000"]


def test_wrong_row_length_is_a_clear_error():
    with pytest.raises(ValueError, match="2 values but the table has 3 columns"):
        Table(["a", "b", "c"], [[1, 2]])


def test_html_and_markdown_escape_and_render():
    t = Table(["a<b"], [["x&y"]], title="T")
    assert "a&lt;b" in t._repr_html_() and "x&amp;y" in t._repr_html_()
    assert t.to_markdown().splitlines()[0] == "| a<b |"


def test_html_scrolls_and_marks_numeric_columns():
    # The book's stylesheet keys on these: div.ql-table-scroll scrolls a wide table under its
    # title, td.num aligns right.
    t = Table(["recipe", "bits", "QSNR dB", "note"], [["int8", 8, 41.0, None], ["fp4", 4, None, "x"]],
              title="Q & A")
    h = t._repr_html_()
    assert h.startswith('<div class="ql-table"><div class="ql-table-title">Q &amp; A</div>'
                        '<div class="ql-table-scroll" role="region" tabindex="0" '
                        'aria-label="Q &amp; A"><table><thead>')
    assert h.endswith("</table></div></div>")
    assert '<th>recipe</th><th class="num">bits</th><th class="num">QSNR dB</th><th>note</th>' in h
    assert '<tr><td>int8</td><td class="num">8</td><td class="num">41.0000</td><td></td></tr>' in h
    assert str(t).splitlines()[1] == "recipe  bits  QSNR dB  note"      # text output unchanged


def test_select_keeps_rows_columns_and_digits():
    t = Table(["a", "b", "c"], [[1, 0.123456, "x"], [2, 1.5, "y"]], title="T", digits=2)
    s = t.select(["c", "a"])
    assert s.columns == ["c", "a"] and s.rows == [["x", 1], ["y", 2]]
    assert s.title == "T" and s.digits == 2
    assert t.select(["b"], title="only b").title == "only b"
    assert str(t.select(["b"])).splitlines()[-2:] == ["0.12", "1.50"]
    assert t.rows == [[1, 0.123456, "x"], [2, 1.5, "y"]]      # the table itself unchanged
    with pytest.raises(ValueError, match="no column"):
        t.select(["a", "d"])


def test_select_keeps_renames_and_orders_columns():
    from quantlib.table import select
    t = Table(["name", "a", "b"], [["x", 1, 2.5], ["y", 3, 4.5]], title="T", digits=2)
    s = select(t, ["b", "name"])
    assert s.columns == ["b", "name"] and s.rows == [[2.5, "x"], [4.5, "y"]]
    assert s.title == "T" and s.digits == 2
    r = select(t, {"name": "n", "b": "short b"}, title="U")
    assert r.columns == ["n", "short b"] and r.rows == [["x", 2.5], ["y", 4.5]] and r.title == "U"
    with pytest.raises(ValueError, match="no column"):
        select(t, ["c"])


def test_transpose_swaps_rows_and_columns():
    from quantlib.table import transpose
    t = Table(["strategy", "weights", "total"], [["ptq", 1.0, 3.0], ["qat", 2.0, 5.0]], title="M")
    tt = transpose(t)
    assert tt.columns == ["strategy", "ptq", "qat"]
    assert tt.rows == [["weights", 1.0, 2.0], ["total", 3.0, 5.0]]
    assert transpose(tt).rows == t.rows and tt.title == "M"
    assert transpose(t, corner="component").columns == ["component", "ptq", "qat"]
