"""The callback's checks as a service, called without HTTP: each refusal names its page, nothing stored."""

from __future__ import annotations

import pytest
from django.test import Client

from mailgate.oauth.callback import SignInAnswer, SignInRefused, complete_sign_in
from mailgate.oauth.models import Grant, OAuthState
from mailgate.servers.models import MailServer
from tests.oauth.conftest import start_connect
from tests.oauth.test_callback import state_of


def answer(params: dict[str, str], *, session_key: str = "", admin: bool = True) -> SignInAnswer:
    return SignInAnswer("microsoft", params, session_key, admin)


def test_an_answer_without_state_is_refused_before_anything_is_looked_up(db: None) -> None:
    with pytest.raises(SignInRefused) as caught:
        complete_sign_in(answer({"code": "abc"}))
    assert caught.value.status == 400 and caught.value.title == "Sign-in answer without state"


def test_the_checks_run_in_order_and_a_refusal_keeps_the_sign_in_for_its_own_session(
    admin_client: Client, outlook_server: MailServer
) -> None:
    state = state_of(start_connect(admin_client, outlook_server))
    session_key = admin_client.session.session_key or ""
    with pytest.raises(SignInRefused) as caught:
        complete_sign_in(answer({"state": state, "code": "abc"}, session_key="another"))
    assert caught.value.status == 403 and "another browser session" in caught.value.title
    with pytest.raises(SignInRefused) as caught:
        complete_sign_in(
            answer({"state": state, "code": "abc"}, session_key=session_key, admin=False)
        )
    assert caught.value.title == "Administrators only"
    assert OAuthState.objects.count() == 1  # still usable by the administrator who started it
    with pytest.raises(SignInRefused) as caught:
        complete_sign_in(
            answer(
                {"state": state, "error": "access_denied", "error_description": "AADSTS65004: x"},
                session_key=session_key,
            )
        )
    assert caught.value.server == outlook_server and "65004" in caught.value.details
    assert OAuthState.objects.count() == 0  # used up by its answer
    assert not Grant.objects.exists()
