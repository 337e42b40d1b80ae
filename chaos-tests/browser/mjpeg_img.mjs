// Opens a page whose <img> shows an MJPEG stream in headless Chromium and prints the decoded
// picture's size as JSON: {"naturalWidth": w, "naturalHeight": h}.
//   node mjpeg_img.mjs <mjpeg url>
import { chromium } from 'playwright-core';

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.setContent(`<img id="cam" src="${url}">`);
  await page.waitForFunction(() => document.getElementById('cam').naturalWidth > 0, null, { timeout: 15000 });
  const size = await page.evaluate(() => {
    const img = document.getElementById('cam');
    return { naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight };
  });
  console.log(JSON.stringify(size));
} finally {
  await browser.close();
}
