"""Labels for clicks and opens that were not a person (mta.policy.scanners)."""

from __future__ import annotations

import pytest

from mta.policy.scanners import PREFETCH_SECONDS, click_label, open_label

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")
CUBOT = ("Mozilla/5.0 (Linux; Android 11; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/120.0 Mobile Safari/537.36")
OUTLOOK = ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)")
OUTLOOK_IMAGES = ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)")
GMAIL_PROXY = ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
               "(via ggpht.com GoogleImageProxy)")
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"

PEOPLE = [FIREFOX, CHROME, IPHONE, CUBOT, "curl/8.5.0", "Wget/1.21.4", OUTLOOK_IMAGES]
SCANNERS = [
    "", "   ",
    "Barracuda Sentinel (EE)",
    "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
    "Mimecast-Url-Protect/1.0",
    "Microsoft SafeLinks",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "Microsoft Office Existence Discovery",
    OUTLOOK,
    "Google-Safety",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0)",
    "SomeCrawler/1.0", "Baiduspider",
    "python-requests/2.31.0", "Go-http-client/1.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/126.0 Safari/537.36",
]


@pytest.mark.parametrize("ua", PEOPLE)
def test_people_have_no_label(ua: str) -> None:
    assert click_label(method="GET", user_agent=ua, now=1000.0, delivered_at=0.0) is None
    assert open_label(user_agent=ua, now=1000.0, delivered_at=0.0) is None
    assert click_label(method="GET", user_agent=ua, now=1000.0, delivered_at=None) is None


@pytest.mark.parametrize("ua", SCANNERS)
def test_scanners(ua: str) -> None:
    assert click_label(method="GET", user_agent=ua, now=1000.0, delivered_at=0.0) == "scanner"
    assert open_label(user_agent=ua, now=1000.0, delivered_at=0.0) == "scanner"


@pytest.mark.parametrize("ua", [FIREFOX, "", "Googlebot"])
def test_head_first(ua: str) -> None:
    assert click_label(method="HEAD", user_agent=ua, now=1000.0, delivered_at=999.0) == "head"
    assert click_label(method="head", user_agent=ua, now=1000.0, delivered_at=None) == "head"


@pytest.mark.parametrize("ua", [GMAIL_PROXY, YAHOO_PROXY, "Mozilla/5.0", " Mozilla/5.0 "])
def test_image_proxies(ua: str) -> None:
    assert open_label(user_agent=ua, now=1000.0, delivered_at=999.0) == "proxy"
    assert open_label(user_agent=ua, now=1000.0, delivered_at=None) == "proxy"


def test_bare_mozilla_is_no_proxy_for_clicks() -> None:
    # Apple's privacy relay fetches images, it does not follow links
    assert click_label(method="GET", user_agent="Mozilla/5.0", now=1000.0,
                       delivered_at=None) is None


@pytest.mark.parametrize("age, label", [
    (0.0, "prefetch"), (PREFETCH_SECONDS - 0.001, "prefetch"), (-5.0, "prefetch"),
    (PREFETCH_SECONDS, None), (3600.0, None)])
def test_prefetch(age: float, label: str | None) -> None:
    now = 1_700_000_000.0
    assert click_label(method="GET", user_agent=FIREFOX, now=now,
                       delivered_at=now - age) == label
    assert open_label(user_agent=FIREFOX, now=now, delivered_at=now - age) == label


def test_order_of_labels() -> None:
    now = 50.0
    # a scanner right after delivery is a scanner; a proxy right after delivery a proxy
    assert click_label(method="GET", user_agent="Mimecast", now=now, delivered_at=now) \
        == "scanner"
    assert open_label(user_agent=GMAIL_PROXY, now=now, delivered_at=now) == "proxy"
    assert open_label(user_agent="Barracuda", now=now, delivered_at=now) == "scanner"
