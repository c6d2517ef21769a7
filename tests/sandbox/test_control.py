"""The control API, its bad-input answers, state persistence across restarts and the config file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mailgate.sandbox.control import ControlAPIError
from mailgate.sandbox.params import ControlError
from mailgate.sandbox.seed import load_config
from mailgate.sandbox.server import Sandbox
from mailgate.sandbox.state import SandboxState
from tests.sandbox_fixtures import ca_context

pytestmark = pytest.mark.nodb


def test_tenants_apps_users_and_secrets_can_be_created(sandbox: Sandbox) -> None:
    control = sandbox.control
    tenant = control.call("create_tenant", name="Fabrikam", domains=["fabrikam.example"])
    user = control.call("create_user", email="pat@fabrikam.example", password="Pat-Password-1")
    assert user["tenant_id"] == tenant["id"]
    app = control.call(
        "create_app",
        name="ERP",
        tenant="fabrikam.example",
        redirect_uris=["https://erp.example/cb"],
        secret_expires_in_days=30,
    )
    assert app["secret"]["value"]
    assert app["audience"] == "AzureADMyOrg"
    snapshot = control.snapshot()
    assert "value" not in snapshot["apps"][app["client_id"]]["secrets"][0]
    assert snapshot["apps"][app["client_id"]]["secrets"][0]["hint"] == app["secret"]["value"][:3]
    second = control.call("add_secret", client_id=app["client_id"], expires_in_days=1)
    assert second["id"] != app["secret"]["id"]
    assert len(control.snapshot()["apps"][app["client_id"]]["secrets"]) == 2


@pytest.mark.parametrize(
    ("action", "params", "field"),
    [
        ("create_tenant", {"name": "X"}, "domains"),
        ("create_app", {"name": "X", "tenant": "nowhere.example"}, "tenant"),
        (
            "create_app",
            {"name": "X", "tenant": "contoso.example", "audience": "Everyone"},
            "audience",
        ),
        (
            "create_app",
            {"name": "X", "tenant": "contoso.example", "redirect_uris": ["http://erp.example/cb"]},
            "uri",
        ),
        ("create_user", {"email": "alex@contoso.example"}, "email"),
        ("update_user", {"user": "ghost@contoso.example", "smtp_auth_disabled": True}, "user"),
        ("set_faults", {"fail": 418}, "fail"),
        ("set_faults", {"delay": "soon"}, "delay"),
        ("set_clock", {"scale": 0}, "scale"),
        ("expire_secret", {"client_id": "nope"}, "client_id"),
        ("grant_send_as", {"mailbox": "info@contoso.example"}, "trustee"),
    ],
)
def test_bad_input_names_the_field(sandbox: Sandbox, action: str, params: dict, field: str) -> None:
    with pytest.raises(ControlAPIError) as caught:
        sandbox.control.call(action, **params)
    assert caught.value.status == 400
    assert caught.value.field == field
    assert field in str(caught.value)


def test_unknown_actions_list_the_known_ones(sandbox: Sandbox) -> None:
    with pytest.raises(ControlAPIError) as caught:
        sandbox.control.call("explode")
    assert caught.value.status == 404
    assert "set_faults" in str(caught.value)


def test_read_only_actions_answer_get_and_others_need_post(sandbox: Sandbox) -> None:
    assert httpx.get(f"{sandbox.http_url}/sandbox/control/counters").status_code == 200
    assert httpx.get(f"{sandbox.http_url}/sandbox/control/set_faults").status_code == 405
    bad = httpx.post(
        f"{sandbox.http_url}/sandbox/control/set_faults",
        content=b"[1]",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400


def test_the_clock_advances_and_scales(sandbox: Sandbox) -> None:
    before = sandbox.control.call("clock")["now"]
    after = sandbox.control.advance_clock(3600)["now"]
    assert 3600 <= after - before < 3700
    assert sandbox.control.call("set_clock", scale=60)["scale"] == 60


def test_the_state_survives_a_restart(
    sandbox_factory: Callable[..., Sandbox], tmp_path: Path, sandbox_template: Path
) -> None:
    state_dir = tmp_path / "state"
    shutil.copytree(sandbox_template, state_dir)
    first = sandbox_factory(state_dir)
    demo = first.demo
    first.control.call("create_user", email="sam@contoso.example")
    first.control.call("update_tenant", tenant="contoso.example", smtp_auth_disabled=True)
    first.control.set_faults(delay=0.01)
    first.control.advance_clock(86400)
    clock = first.control.call("clock")["now"]
    first.stop()
    second = sandbox_factory(state_dir)
    assert second.demo == demo
    snapshot = second.control.snapshot()
    assert "sam@contoso.example" in snapshot["users"]
    assert snapshot["tenants"][demo["tenant_id"]]["smtp_auth_disabled"] is True
    assert snapshot["faults"]["delay"] == 0.01
    assert second.control.call("clock")["now"] >= clock
    assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o600


def test_the_state_file_holds_digests_not_bearer_tokens(sandbox: Sandbox) -> None:
    from tests.sandbox.test_microsoft_errors import refresh, tokens

    with httpx.Client(verify=ca_context(sandbox.ca_file), base_url=sandbox.https_url) as browser:
        body = tokens(sandbox, browser)
    refresh(sandbox, body["refresh_token"])
    text = (sandbox.state_dir / "state.json").read_text()
    assert body["refresh_token"] not in text
    assert body["access_token"] not in text


def test_a_config_file_adds_tenants_users_apps_and_google_clients(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text(
        """
[[tenants]]
name = "Fabrikam"
domains = ["fabrikam.example"]

[[users]]
email = "pat@fabrikam.example"
password = "Pat-Password-1"

[[apps]]
client_id = "11111111-2222-3333-4444-555555555555"
name = "ERP"
tenant = "fabrikam.example"
redirect_uris = ["https://erp.example/cb"]
secret_value = "erp-secret-value"

[google]
[[google.projects]]
client_id = "123-abc.apps.googleusercontent.com"
client_secret = "GOCSPX-config"
name = "ERP"
redirect_uris = ["https://erp.example/google"]
"""
    )
    first = sandbox_factory(config=config)
    snapshot = first.control.snapshot()
    assert "pat@fabrikam.example" in snapshot["users"]
    assert "11111111-2222-3333-4444-555555555555" in snapshot["apps"]
    assert "123-abc.apps.googleusercontent.com" in snapshot["google"]["projects"]
    first.stop()
    # Applying the same config again to the same state changes nothing.
    again = SandboxState(first.state_dir, config=config)
    assert len(again.data["apps"]) == len(snapshot["apps"])


def test_a_broken_config_file_is_named_in_the_error(tmp_path: Path) -> None:
    config = tmp_path / "broken.json"
    config.write_text("{nope")
    with pytest.raises(ControlError, match=r"broken\.json is not valid JSON"):
        load_config(config)
    with pytest.raises(ControlError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_the_control_api_answers_json_errors_for_unknown_paths(sandbox: Sandbox) -> None:
    response = httpx.get(f"{sandbox.http_url}/nowhere/at/all")
    assert response.status_code == 404
    assert json.loads(response.text)["error"] == "not_found"


def test_messages_and_the_mail_catcher_page(sandbox: Sandbox) -> None:
    assert sandbox.control.messages() == []
    page = httpx.get(f"{sandbox.http_url}/sandbox/messages")
    assert page.status_code == 200
    assert "No messages yet." in page.text


def test_deliver_needs_dovecot_and_says_so(sandbox: Sandbox) -> None:
    with pytest.raises(ControlAPIError) as caught:
        sandbox.control.call("deliver", to="alex@contoso.example", subject="hi")
    assert caught.value.status == 503
    assert "apt-get install dovecot-imapd dovecot-pop3d" in str(caught.value)
