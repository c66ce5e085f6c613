import { launch, openComfy, closeDialogs, nextFrames } from "./lib.mjs";
// Node search as a user types it: the first results for the terms a rotoscoper uses. usage: node check_search.mjs URL
const url = process.argv[2];
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await openComfy(page, url, { nodeType: "UniVS_PropagateMasks" });
await closeDialogs(page);
await nextFrames(page);
const box = await page.locator("#graph-canvas").boundingBox();
const out = {};
for (const term of ["roto", "rotoscope", "matte", "track object"]) {
  await page.mouse.dblclick(box.x + box.width * 0.4, box.y + box.height * 0.35);
  const input = page.locator("[role=dialog] input, .comfy-vue-node-search-container input, input.p-autocomplete-input").first();
  await input.waitFor({ state: "visible", timeout: 30000 });
  await input.fill(term);
  await page.waitForFunction(() => document.querySelectorAll("[role=option]").length > 0, null, { timeout: 30000 });
  await nextFrames(page);
  out[term] = await page.$$eval("[role=option]", els => els.slice(0, 5).map(e => e.innerText.replace(/\s+/g, " ").trim().slice(0, 60)));
  await page.screenshot({ path: `/tmp/search_${term.replace(" ", "_")}.png` });
  await page.keyboard.press("Escape");
  await closeDialogs(page);
}
console.log(JSON.stringify(out, null, 1));
await browser.close();
