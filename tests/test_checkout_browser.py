"""The human-assisted flow in real Chromium: the agent's poll loop from the reference
document runs while the test, playing the human, pays on the hosted page."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from tests import reference as ref
from tests.helpers import CARD_DECLINED, Api


def test_human_pays_in_the_browser_while_the_agent_polls(
    api: Api, browser: object, artifacts: Path, backend: str
) -> None:
    ref.configure(api.base_url)
    agent = api.new_agent()
    outcome: dict = {}
    links: queue.Queue[dict] = queue.Queue()
    poller = threading.Thread(
        target=lambda: outcome.update(
            result=ref.fund_via_human(
                agent.token, amount=50, poll_interval=0.3, max_wait=60, show_link=links.put
            )
        )
    )
    poller.start()
    link = links.get(timeout=30)

    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    page.goto(link["payment_url"])
    assert page.get_by_test_id("amount").inner_text() == "$50.00"
    assert page.locator("#countdown").inner_text().endswith(" s")
    overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False  # no sideways scrolling on a phone
    page.screenshot(path=str(artifacts / f"checkout-form-{backend}.png"), full_page=True)

    # A declined card: the human sees why and can try again.
    page.get_by_label("Card number").fill(CARD_DECLINED)
    page.get_by_label("Expiry (MM/YY)").fill("12/34")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay $50.00").click()
    alert = page.get_by_role("alert")
    assert "declined" in alert.inner_text()
    page.screenshot(path=str(artifacts / f"checkout-declined-{backend}.png"), full_page=True)
    assert agent.balance() == 0

    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_label("Expiry (MM/YY)").fill("12/34")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay $50.00").click()
    session_id = page.get_by_test_id("session-id").inner_text()
    assert session_id == link["session_id"]
    page.get_by_role("button", name="Copy").click()
    page.screenshot(path=str(artifacts / f"checkout-success-{backend}.png"), full_page=True)
    page.close()

    poller.join(timeout=60)
    result = outcome["result"]
    assert result is not None, "the agent never saw the payment"
    assert result["balance"] == 50
    assert result["session_id"] == session_id
    assert agent.balance() == 50
