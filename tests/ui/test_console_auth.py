"""The console's session tokens and redirects, without a browser (`modelyard.server.ui.auth`)."""

from __future__ import annotations

import time

from modelyard.server.ui.auth import ConsoleSessions, safe_next


def test_a_token_verifies_until_it_is_changed_expires_or_is_signed_out():
    sessions = ConsoleSessions("my-admin-key")
    token = sessions.issue()
    sid = sessions.verify(token)
    assert sid and token.startswith(sid + ".")
    sid_part, expires, signature = token.split(".")
    assert sessions.verify(f"{sid_part}.{int(expires) + 3600}.{signature}") is None  # a longer life is not signed
    assert sessions.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None
    assert sessions.verify("") is None and sessions.verify(None) is None and sessions.verify("a.b") is None
    sessions.revoke(token)
    assert sessions.verify(token) is None
    assert sessions.verify(sessions.issue()) is not None  # other sessions go on


def test_tokens_end_with_their_ttl_and_with_the_admin_key():
    short = ConsoleSessions("my-admin-key", ttl_s=-1)
    assert short.verify(short.issue()) is None
    token = ConsoleSessions("my-admin-key").issue()
    assert ConsoleSessions("my-admin-key").verify(token) is not None  # survives a gateway restart
    assert ConsoleSessions("my-new-admin-key").verify(token) is None  # a new admin key ends every session
    assert int(token.split(".")[1]) > time.time() + 11 * 3600


def test_csrf_tokens_are_per_session():
    sessions = ConsoleSessions("my-admin-key")
    a, b = sessions.verify(sessions.issue()), sessions.verify(sessions.issue())
    assert sessions.csrf_token(a) == sessions.csrf_token(a) != sessions.csrf_token(b)
    assert ConsoleSessions("other").csrf_token(a) != sessions.csrf_token(a)


def test_sign_in_only_returns_to_console_pages():
    assert safe_next("/ui/endpoints/chat?x=1") == "/ui/endpoints/chat?x=1"
    for bad in ("//evil.example/ui", "https://evil.example/ui", "/api/keys", "", None, "/ui\\..\\x"):
        assert safe_next(bad) == "/ui/catalog"
