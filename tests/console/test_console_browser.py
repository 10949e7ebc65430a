"""The console in a real browser (Debian chromium driven by Playwright) against a live mesh.

Screenshots of every page are saved under test-artifacts/console/ (printed at the start).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from console_mesh import OPERATOR_TOKEN, ConsoleMesh, console_mesh, console_section
from console_samples import HDFS
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from support import Pki

from anomaly_svc.models.datasets import load
from anomaly_svc.models.train import train
from gen.edgebot.v1 import anomaly_pb2

pytestmark = pytest.mark.asyncio(loop_scope="module")
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
LAPTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}
# Without the background-networking flags chromium keeps dialling out of this closed network.
CHROMIUM_ARGS = [
    "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
OLD_MODEL, NEW_MODEL = "20250101T000000000000Z", "20260101T000000000000Z"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nconsole screenshots and downloads: {ARTIFACTS}")
    return ARTIFACTS


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleMesh]:
    tmp_path = tmp_path_factory.mktemp("console-browser")
    section = console_section(pki, tmp_path, events_page_size=4)
    async with console_mesh(pki, tmp_path, section) as running_mesh:
        sent = await running_mesh.send_sample("ssh-bf")
        await running_mesh.wait_stored("", sent)
        await running_mesh.analyse("auth")
        yield running_mesh


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(viewport=LAPTOP, accept_downloads=True)
    yield opened
    await opened.close()


async def _logged_in(context: BrowserContext, mesh: ConsoleMesh) -> Page:
    page = await context.new_page()
    await page.goto(mesh.url)
    await expect(page).to_have_url(f"{mesh.url}/login")
    await page.fill("#token", OPERATOR_TOKEN)
    await page.click("#login-button")
    await expect(page.locator("#operator")).to_have_text("alice")
    return page


async def test_log_in_and_see_an_anomaly_from_the_sample_logs(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path
) -> None:
    page = await context.new_page()
    await page.goto(mesh.url)
    await expect(page).to_have_url(f"{mesh.url}/login")
    await page.fill("#token", "not-the-token-of-anyone")
    await page.click("#login-button")
    await expect(page.locator("#login-error")).to_have_text(
        "That token is not valid — check it and try again."
    )
    await page.screenshot(path=artifacts / "login.png")
    await page.fill("#token", OPERATOR_TOKEN)
    await page.click("#login-button")
    await expect(page.locator("#operator")).to_have_text("alice")
    rows = page.locator("#anomaly-results tbody tr")
    await expect(rows.filter(has_text="user_enumeration")).to_have_count(1)
    row = rows.filter(has_text="user_enumeration")
    await expect(row).to_contain_text("sd-126005")
    await expect(row).to_contain_text("6 different invalid user names tried from 35.188.49.176")
    await page.select_option("#filter-agent", "firewall")
    await page.click("#anomaly-filters button[type=submit]")
    await expect(page.locator("#anomaly-results .empty")).to_be_visible()
    await page.select_option("#filter-agent", "auth")
    await page.click("#anomaly-filters button[type=submit]")
    await expect(rows.filter(has_text="user_enumeration")).to_have_count(1)
    await page.screenshot(path=artifacts / "anomalies.png", full_page=True)
    await page.set_viewport_size(TABLET)
    await page.screenshot(path=artifacts / "anomalies-tablet.png", full_page=True)


async def test_resolve_and_label_an_anomaly(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path
) -> None:
    page = await _logged_in(context, mesh)
    await page.locator("#anomaly-results tbody tr", has_text="user_enumeration").click()
    detail = page.locator("#anomaly-detail")
    await expect(detail.locator("h1")).to_contain_text("user_enumeration on sd-126005")
    await expect(detail.locator("[data-fact='Model version']")).to_have_text("rules (no model)")
    await expect(detail.locator("svg.features text", has_text="distinct_users")).to_have_count(1)
    await expect(detail.locator("#context-events tbody tr")).to_have_count(6)
    await expect(detail.locator("#context-events tr.in-anomaly")).to_have_count(6)
    await page.fill("#action-notes", "blocked 35.188.49.176 at the edge firewall")
    await page.select_option("#action-resolution", "fixed")
    await page.click("#do-resolve")
    await expect(page.locator("#anomaly-status")).to_have_text("resolved")
    await page.click("#label-true")
    await expect(page.locator("#anomaly-label")).to_have_text("true positive")
    await page.screenshot(path=artifacts / "anomaly-detail.png", full_page=True)
    anomaly_id = page.url.rsplit("/", 1)[-1]
    got = (await mesh.stub.GetAnomaly(anomaly_pb2.GetAnomalyRequest(id=anomaly_id))).anomaly
    assert got.type == "user_enumeration"
    assert got.status == anomaly_pb2.ANOMALY_STATUS_RESOLVED
    assert got.resolution == "fixed"
    assert got.notes == "blocked 35.188.49.176 at the edge firewall"
    assert got.label == anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE


async def test_a_live_alert_arrives_without_a_reload(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path
) -> None:
    page = await _logged_in(context, mesh)
    await page.click("#nav a[data-page=alerts]")
    await expect(page.locator("#alerts-state")).to_have_text("Live")
    await page.evaluate("window.__notReloaded = true")
    before = await mesh.stored("")
    sent = await mesh.send_sample("iptables-scan-multi-port")
    await mesh.wait_stored("", before + sent)
    await mesh.analyse("firewall")
    alert = page.locator("#alert-list li.alert", has_text="firewall · port_scan")
    await expect(alert.first).to_be_visible(timeout=15_000)
    await expect(alert.first).to_contain_text("new")
    assert await page.evaluate("window.__notReloaded") is True
    await page.screenshot(path=artifacts / "alerts.png", full_page=True)


async def test_search_events_with_paging_and_a_live_tail(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path
) -> None:
    page = await _logged_in(context, mesh)
    await page.click("#nav a[data-page=events]")
    await page.fill("#events-service", "sshd, sshd-session")
    await page.fill("#events-text", "invalid user")
    await page.click("#events-search")
    rows = page.locator("#event-table tbody tr")
    await expect(rows).to_have_count(4)  # events_page_size is 4 in this console
    await expect(rows.first).to_contain_text("Invalid user")
    await page.click("#events-older")
    await expect(rows).to_have_count(await mesh.stored("Invalid user") - 4)
    await expect(page.locator("#events-older")).to_be_disabled()
    await page.click("#events-newer")
    await expect(rows).to_have_count(4)
    await page.fill("#events-text", "")
    await page.click("#tail-toggle")
    await expect(page.locator("#tail-state")).to_have_text("Live")
    await asyncio.sleep(0.3)
    before = await mesh.stored("")
    sent = await mesh.send_sample("sshd-success-logs")
    await mesh.wait_stored("", before + sent)
    await expect(page.locator("#tail-table tbody tr")).to_have_count(sent, timeout=15_000)
    await page.screenshot(path=artifacts / "events.png", full_page=True)


async def test_monitoring_draws_health_and_charts(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path
) -> None:
    page = await _logged_in(context, mesh)
    await page.click("#nav a[data-page=monitoring]")
    tiles = page.locator("#service-tiles .tile")
    await expect(tiles).to_have_count(5)
    await expect(page.locator("#service-tiles .tile-up")).to_have_count(5)
    await expect(page.locator("#sink-tiles .tile-up")).to_contain_text("sqlite (primary)")
    for chart in ("chart-stored", "chart-ingest", "chart-spool", "chart-outbox"):
        await expect(page.locator(f"#{chart} polyline.series").first).to_be_attached()
    await expect(page.locator("#chart-spool polyline[data-series='site-a']")).to_be_attached()
    assert await page.locator("#chart-anomalies rect.bar").count() >= 1
    await page.screenshot(path=artifacts / "monitoring.png", full_page=True)
    await page.set_viewport_size(TABLET)
    await page.screenshot(path=artifacts / "monitoring-tablet.png", full_page=True)


async def test_run_an_export_and_download_it(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path
) -> None:
    page = await _logged_in(context, mesh)
    await page.click("#nav a[data-page=exports]")
    await page.select_option("#export-format", "csv")
    await page.select_option("#export-compression", "gzip")
    await page.click("#export-create")
    card = page.locator("#export-list li.export").first
    await expect(card).to_have_attribute("data-state", "succeeded", timeout=20_000)
    await expect(card.locator(".progress span")).to_have_text("100 %")
    await page.screenshot(path=artifacts / "exports.png", full_page=True)
    async with page.expect_download() as waiting:
        await card.locator("a.download").first.click()
    download = await waiting.value
    saved = artifacts / download.suggested_filename
    await download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(saved.read_bytes()).decode())))
    assert len(rows) == await mesh.stored("")
    assert any("Invalid user pascal" in row["message"] for row in rows)
    export_id = await card.get_attribute("data-export-id")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await card.locator("button.delete").click()
    await expect(page.locator(f"#export-list li[data-export-id='{export_id}']")).to_have_count(0)
    listed = await mesh.stub.ListExports(anomaly_pb2.ListExportsRequest())
    assert export_id not in [e.id for e in listed.exports]


@pytest.mark.slow
async def test_models_page_rolls_back_to_the_previous_version(
    mesh: ConsoleMesh, context: BrowserContext, artifacts: Path, tmp_path: Path
) -> None:
    trained = await asyncio.to_thread(train, "logpattern", load(HDFS, "hdfs"), tmp_path)
    models = mesh.anomaly.config.models.dir / "logpattern"
    for version in (OLD_MODEL, NEW_MODEL):
        await asyncio.to_thread(shutil.copytree, trained.path, models / version)
    page = await _logged_in(context, mesh)
    await page.click("#nav a[data-page=models]")
    card = page.locator("section.card[data-agent=logpattern]")
    for _ in range(50):
        if await card.locator("h2", has_text=f"serving {NEW_MODEL}").count():
            break
        await page.click("#reload-all")
        await asyncio.sleep(0.2)
    await expect(card.locator("h2")).to_contain_text(f"serving {NEW_MODEL}")
    await expect(card.locator(f"tr[data-version='{NEW_MODEL}']")).to_contain_text("loaded")
    await card.locator("button.rollback").click()
    await expect(card.locator("h2")).to_contain_text(f"serving {OLD_MODEL}")
    await expect(card.locator("h2")).to_contain_text("rolled back — pinned")
    await expect(card.locator(f"tr[data-version='{NEW_MODEL}']")).to_contain_text("retired")
    await page.screenshot(path=artifacts / "models.png", full_page=True)
    listed = await mesh.stub.ListModels(anomaly_pb2.ListModelsRequest(agents=["logpattern"]))
    assert [
        (m.version, m.pinned) for m in listed.models if m.state == anomaly_pb2.MODEL_STATE_LOADED
    ] == [(OLD_MODEL, True)]
    await card.locator("button.reload").click()
    await expect(card.locator("h2")).to_contain_text(f"serving {NEW_MODEL}")
    await expect(card.locator("h2")).not_to_contain_text("pinned")
