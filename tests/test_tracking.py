"""Link rewriting and the open pixel (mta.mail.tracking)."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import pytest

from mta.mail.tracking import MAX_LINKS, MAX_URL, NOTRACK_ATTR, add_open_pixel, rewrite_links


def track(n: int, url: str) -> str:
    return f"https://t.example/c/T{n}"


def rw(html: str) -> tuple[str, list[str]]:
    return rewrite_links(html, track)


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area"):
            self.hrefs.append(dict(attrs).get("href"))


def hrefs(html: str) -> list[str | None]:
    p = _Hrefs()
    p.feed(html)
    p.close()
    return p.hrefs


@pytest.mark.parametrize("html, url", [
    ('<a href="https://example.com/a">x</a>', "https://example.com/a"),
    ("<a href='https://example.com/a'>x</a>", "https://example.com/a"),
    ("<a href=https://example.com/a>x</a>", "https://example.com/a"),
    ('<A HREF="HTTP://Example.com/A">x</A>', "HTTP://Example.com/A"),
    ('<a class="b" href = "http://e.com/?q=1&amp;r=2" id=x>x</a>', "http://e.com/?q=1&r=2"),
    ('<a href="  https://e.com/sp  ">x</a>', "https://e.com/sp"),
    ('<a href="\nhttps://e.com/nl\t">x</a>', "https://e.com/nl"),
    ('<a href="https://e.com/&#x41;&#66;">x</a>', "https://e.com/AB"),
    ('<a href="&#104;ttps://e.com/enc">x</a>', "https://e.com/enc"),
    ('<a title="a > b" href="https://e.com/gt">x</a>', "https://e.com/gt"),
    ("<a\nhref='https://e.com/l'\n>x</a>", "https://e.com/l"),
    ('<area shape=rect href="https://e.com/map">', "https://e.com/map"),
    ('<a/href="https://e.com/slash">x</a>', "https://e.com/slash"),
])
def test_rewritten(html: str, url: str) -> None:
    out, urls = rw(html)
    assert urls == [url]
    assert hrefs(out) == ["https://t.example/c/T0"]


def test_rest_of_document_unchanged() -> None:
    html = ('<html><head><title>Hi &amp; bye</title></head>\n<body style="x">'
            '<p>Text &copy; <b>bold</b></p>\n<a class="btn" href="https://e.com/x" '
            'target=_blank>Go</a> tail <img src="https://e.com/i.png"></body></html>')
    out, urls = rw(html)
    assert urls == ["https://e.com/x"]
    assert out == html.replace('href="https://e.com/x"', 'href="https://t.example/c/T0"')


def test_url_for_gets_index_and_url_and_is_escaped() -> None:
    seen: list[tuple[int, str]] = []

    def url_for(n: int, url: str) -> str:
        seen.append((n, url))
        return f'https://t.example/c?n={n}&x="<>'
    out, urls = rewrite_links('<a href="https://a.com">a</a><a href="https://b.com">b</a>'
                              '<a href="https://a.com">a again</a>', url_for)
    assert urls == ["https://a.com", "https://b.com"]
    assert (0, "https://a.com") in seen and (1, "https://b.com") in seen
    assert 'href="https://t.example/c?n=0&amp;x=&quot;&lt;&gt;"' in out
    assert hrefs(out) == ['https://t.example/c?n=0&x="<>', 'https://t.example/c?n=1&x="<>',
                          'https://t.example/c?n=0&x="<>']


@pytest.mark.parametrize("html", [
    '<a href="mailto:jane@example.com">m</a>',
    '<a href="tel:+123">t</a>',
    '<a href="#top">top</a>',
    '<a href="/relative/path">r</a>',
    '<a href="relative.html">r</a>',
    '<a href="//e.com/proto-relative">p</a>',
    '<a href="javascript:alert(1)">j</a>',
    '<a href="JaVaScRiPt:alert(1)">j</a>',
    '<a href="data:text/html,hi">d</a>',
    '<a href="ftp://e.com/f">f</a>',
    '<a href="http://">empty host</a>',
    '<a href="">empty</a>',
    '<a href>no value</a>',
    "<a name=x>no href</a>",
    '<link href="https://e.com/style.css">',
    '<img src="https://e.com/i.png">',
    '<base href="https://e.com/">',
    '<abbr href="https://e.com/not-a-link">x</abbr>',
    '<!-- <a href="https://e.com/commented">x</a> -->',
    '<script>var s = "<a href=\'https://e.com/in-script\'>";</script>',
    '<style>/* <a href="https://e.com/in-style"> */</style>',
    '<textarea><a href="https://e.com/in-textarea"></textarea>',
    '<title><a href="https://e.com/in-title"></title>',
    '<p>a &lt;a href="https://e.com/text"&gt; in text</p>',
])
def test_not_rewritten(html: str) -> None:
    assert rw(html) == (html, [])


def test_after_raw_text_scanning_resumes() -> None:
    html = ('<script>x = "</scriptx>";</script><!-- c --><a href="https://e.com/after">a</a>'
            '<STYLE>a{}</STYLE ><a href="https://e.com/two">b</a>')
    out, urls = rw(html)
    assert urls == ["https://e.com/after", "https://e.com/two"]


def test_legacy_entities_in_query_kept_as_browsers_do() -> None:
    html = '<a href="https://e.com/?a=1&copy=2&reg;=3&amp;b=4&notit=5&lt">x</a>'
    _, urls = rw(html)
    assert urls == ["https://e.com/?a=1&copy=2®=3&b=4&notit=5<"]


def test_first_href_wins() -> None:
    out, urls = rw('<a href="https://first.com" HREF="https://second.com">x</a>')
    assert urls == ["https://first.com"]
    assert 'HREF="https://second.com"' in out


def test_notrack_attribute_removed_and_link_kept() -> None:
    for html, expect in [
        (f'<a href="https://e.com/x" {NOTRACK_ATTR}>x</a>', '<a href="https://e.com/x" >x</a>'),
        (f'<a {NOTRACK_ATTR} href="https://e.com/x">x</a>', '<a href="https://e.com/x">x</a>'),
        ('<a DATA-MTA-NOTRACK="1" href=https://e.com/x>x</a>', "<a href=https://e.com/x>x</a>"),
        (f'<a href=https://e.com/x {NOTRACK_ATTR}/>x</a>', "<a href=https://e.com/x />x</a>"),
    ]:
        assert rw(html) == (expect, [])
    out, urls = rw(f'<a {NOTRACK_ATTR} href="https://e.com/a">a</a>'
                   '<a href="https://e.com/b">b</a>')
    assert urls == ["https://e.com/b"]
    assert hrefs(out) == ["https://e.com/a", "https://t.example/c/T0"]


def test_notrack_on_other_tags_untouched() -> None:
    html = f'<p {NOTRACK_ATTR}>x</p>'
    assert rw(html) == (html, [])


def test_max_url() -> None:
    ok = "https://e.com/" + "x" * (MAX_URL - len("https://e.com/"))
    too_long = ok + "y"
    out, urls = rw(f'<a href="{ok}">a</a><a href="{too_long}">b</a>')
    assert urls == [ok]
    assert too_long in out


def test_max_links() -> None:
    html = "".join(f'<a href="https://e.com/{i}">{i}</a>' for i in range(MAX_LINKS + 5))
    out, urls = rw(html)
    assert urls == [f"https://e.com/{i}" for i in range(MAX_LINKS)]
    got = hrefs(out)
    assert got[:MAX_LINKS] == [f"https://t.example/c/T{i}" for i in range(MAX_LINKS)]
    assert got[MAX_LINKS:] == [f"https://e.com/{i}" for i in range(MAX_LINKS, MAX_LINKS + 5)]
    # a URL already in the list is still rewritten past the limit
    out, urls = rw(html + '<a href="https://e.com/0">again</a>')
    assert hrefs(out)[-1] == "https://t.example/c/T0" and len(urls) == MAX_LINKS


def test_unterminated_tag_stops_rewriting() -> None:
    html = '<a href="https://e.com/ok">x</a><a href="https://e.com/open" title="never closed'
    out, urls = rw(html)
    assert urls == ["https://e.com/ok"]
    assert out.endswith('<a href="https://e.com/open" title="never closed')


@pytest.mark.parametrize("hostile", [
    "<a href=" * 100000, '<a href="' * 100000, "<a " * 100000, "<!--" * 100000,
    "<script>" * 100000, "<a b='>x'" * 100000, "</a b='" * 100000,
    '<a href="https://e.com">' * 20000, "<" * 300000, "&" * 300000,
    '<a href="' + "&amp" * 100000 + '">'])
def test_hostile_input_is_linear(hostile: str) -> None:
    started = time.perf_counter()
    out, urls = rw(hostile)
    assert time.perf_counter() - started < 2.0
    assert isinstance(out, str) and len(urls) <= MAX_LINKS


def test_pixel_before_last_body_end() -> None:
    html = "<html><body><p>x</p><!-- </body> --></BODY>\n</html>"
    out = add_open_pixel(html, "https://t.example/o/T?a=1&b=2")
    pixel = ('<img src="https://t.example/o/T?a=1&amp;b=2" width="1" height="1" alt="" '
             'style="display:block;border:0;width:1px;height:1px">')
    assert out == "<html><body><p>x</p><!-- </body> -->" + pixel + "</BODY>\n</html>"


def test_pixel_appended_without_body_end() -> None:
    out = add_open_pixel("<p>fragment</p><bodyx>", 'https://t/o?"x"')
    assert out.startswith("<p>fragment</p><bodyx><img ")
    assert 'src="https://t/o?&quot;x&quot;"' in out and out.endswith(">")


def test_pixel_on_hostile_input() -> None:
    html = "</body" * 100000
    started = time.perf_counter()
    out = add_open_pixel(html, "https://t/o")
    assert time.perf_counter() - started < 1.0
    assert out.startswith(html) and out[len(html):].startswith('<img src="https://t/o"')
    out = add_open_pixel("</body " * 100000 + ">", "https://t/o")   # the last one is the tag
    assert out.startswith("</body " * 99999 + "<img ")
