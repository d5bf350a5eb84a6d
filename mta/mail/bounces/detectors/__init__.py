"""The detector table: which module reads a message, tried in this order.

Each detector is a `Detector`: `detect(mail: Mail) -> BounceReport | None`;
the first that returns a report wins. Order matters and is deliberate:

  1. arf        complaints: RFC 5965 feedback-report parts, ARF fields in plain
                text, vendor JSON complaints (Amazon SES).  Before DSN because
                a complaint can quote a message that itself was a bounce.
  2. sesjson    Amazon SES bounce/delivery notifications (JSON bodies).
  3. dsn        RFC 3464 message/delivery-status in the message's own tree.
  4. textdsn    RFC 3464 fields in text (broken MIME, a DSN forwarded inside
                another message) -> kind "bounce".
  5. autoreply  RFC 3834 auto-replies and vacation notices, unless the
                message also looks like a failure notice.
  6. textbounce non-standard failure notices of Postfix, Exim, Sendmail,
                qmail, Exchange/Office 365, Gmail, Yahoo, Lotus Notes, ...:
                vendor rules first, then generic address/reply extraction.
Anything left is "nonbounce".
"""

from collections.abc import Callable

from mta.mail.bounces.context import Mail
from mta.mail.bounces.detectors import arf, autoreply, dsn, sesjson, textbounce, textdsn
from mta.mail.bounces.model import BounceReport

Detector = Callable[[Mail], BounceReport | None]

DETECTORS: tuple[Detector, ...] = (arf.detect, sesjson.detect, dsn.detect, textdsn.detect,
                                   autoreply.detect, textbounce.detect)
