"""The API docs page works with no network: Swagger UI comes from mailgate's own static files."""

from __future__ import annotations

from playwright.sync_api import BrowserContext, Route


def test_the_docs_page_renders_with_every_outside_request_refused(
    context: BrowserContext, live_server: object
) -> None:
    origin = str(live_server.url)  # type: ignore[attr-defined]
    outside: list[str] = []

    def only_mailgate(route: Route) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_mailgate)
    page = context.new_page()
    page.goto("/api/v1/docs")
    page.get_by_text("Queue a message").wait_for()
    page.get_by_role("button", name="Authorize").wait_for()
    assert page.get_by_text("Idempotency-Key").count() >= 1
    assert outside == []
