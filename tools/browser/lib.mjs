// Shared helpers for the headless-chromium checks: start the browser, wait for the ComfyUI app, wait for quiet.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM });
}

// Counts the page's HTTP requests in flight, so callers can wait for "nothing loading" instead of sleeping.
export function trackRequests(page) {
  const inflight = new Set();
  let lastChange = Date.now();
  const done = (r) => { inflight.delete(r); lastChange = Date.now(); };
  page.on("request", (r) => { inflight.add(r); lastChange = Date.now(); });
  page.on("requestfinished", done);
  page.on("requestfailed", done);
  return {
    // Resolves once no request has been in flight for quietMs; throws after timeoutMs.
    async idle({ quietMs = 500, timeoutMs = 30_000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (!inflight.size && Date.now() - lastChange >= quietMs) return;
        if (Date.now() > deadline) {
          throw new Error(`network not idle after ${timeoutMs} ms: ${[...inflight].map((r) => r.url()).join(", ")}`);
        }
        await page.waitForTimeout(50); // polling interval, not a wait for the event itself
      }
    },
  };
}

// The app is usable once the graph exists, the Vue shell replaced the splash screen and the node defs
// (ours included) are registered.
export async function openComfy(page, url, { nodeType, timeoutMs = 120_000 } = {}) {
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(
    (type) => window.app?.isGraphReady && window.app.vueAppReady && !document.getElementById("splash-loader")
      && (!type || window.LiteGraph?.registered_node_types?.[type]),
    nodeType, { timeout: timeoutMs });
}

// Two animation frames: the canvas has drawn everything that was queued before.
export async function nextFrames(page) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

export async function closeDialogs(page) {
  const dialogs = page.locator("[role=dialog]");
  for (let i = 0; i < 5 && (await dialogs.count()); i++) {
    await page.keyboard.press("Escape");
    await dialogs.first().waitFor({ state: "detached", timeout: 10_000 }).catch(() => {});
  }
}
