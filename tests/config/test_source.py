from optinspect.config.source import scan


def test_key_and_value_positions_with_aligned_equals_and_comments():
    text = "a = 1\n[optimizer]\ntype   = 'scorn'   # comment\n  lr = 1e-4\nbetas = [0.9,\n  0.99,]\n"
    m = scan(text)
    k = m.key_span(("optimizer", "type"))
    assert (k.line, k.column, k.end_column) == (3, 1, 5)
    v = m.value_span(("optimizer", "type"))
    assert (v.line, v.column, v.end_column) == (3, 10, 17)
    assert m.key_span(("optimizer", "lr")).column == 3
    second = m.value_span(("optimizer", "betas", 1))
    assert (second.line, second.column) == (6, 3)


def test_crlf_and_non_ascii_positions():
    text = "[model]\r\npath = '/données/モデル'\r\n[optimizer]\r\nlr = 2\r\n"
    m = scan(text)
    assert m.key_span(("optimizer", "lr")).line == 4
    assert m.value_span(("model", "path")).column == 8


def test_duplicates_tables_inline_and_multiline_strings():
    text = 'x = """\n[optimizer]\nlr = 1\n"""\n[optimizer]\nlr = 1\nlr = 2\nt = {a = 1, b = [1, 2]}\n[optimizer]\n'
    m = scan(text)
    assert ("optimizer",) in m.tables and m.tables[("optimizer",)].line == 5  # the string is not a header
    dup_paths = [p for p, _ in m.duplicates]
    assert ("optimizer", "lr") in dup_paths and ("optimizer",) in dup_paths
    assert m.value_span(("optimizer", "t", "b", 1)).line == 8


def test_suppression_comments_and_array_of_tables():
    text = "[[optimizer]]\ntype = 'x' # optinspect: ignore[OPT101, opt102]\n[[optimizer]]\n"
    m = scan(text)
    assert m.suppressions[2] == {"OPT101", "OPT102"}
    assert ("optimizer", 1) in m.tables


def test_scan_never_raises_on_garbage():
    for text in ["[", "a = [1, 2", "'''", "= = =", "[a.\"b\n", "\x7f\x01"]:
        scan(text)
