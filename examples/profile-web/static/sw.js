// Service worker of the profile-picture demo.
//
// - The app shell (page, JS glue, wasm) lives in a cache named after the build
//   (`cargo xtask` writes the build id below), network first: online, a new
//   build is picked up on the next load; offline, the cache answers. A new
//   build's worker takes over at once (skipWaiting + clients.claim) and deletes
//   the older builds' caches.
// - `/pictures/{id}` is answered from the page's Cache API tier (the cache
//   "profile-pictures", entries with their expiry in a header), online or not:
//   `<img src="/pictures/42">` works offline once the page has seen user 42.
// - The API, metrics and dashboard always go to the network.
const BUILD = "__BUILD__";
const SHELL_PREFIX = "profile-web-shell-";
const SHELL = SHELL_PREFIX + BUILD;
const PICTURES = "profile-pictures";
const EXPIRES_HEADER = "x-cache-browser-expires-at";
const FILES = ["./", "./index.html", "./profile_web.js", "./profile_web_bg.wasm"];
// client id → "sw-cache" | "sw-network": how each page was served.
const served = new Map();

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(SHELL)
      .then((cache) => cache.addAll(FILES.map((f) => new Request(f, { cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) =>
        Promise.all(
          names
            .filter((n) => n.startsWith(SHELL_PREFIX) && n !== SHELL)
            .map((n) => caches.delete(n)),
        ),
      )
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("message", (event) => {
  if (event.data && event.data.type === "page-source" && event.source) {
    event.source.postMessage({ type: "page-source", source: served.get(event.source.id) || "unknown", build: BUILD });
  }
});

async function picture(request) {
  const cache = await caches.open(PICTURES);
  const hit = await cache.match(request, { ignoreSearch: true });
  const expires = hit ? Number(hit.headers.get(EXPIRES_HEADER)) : 0;
  if (hit && expires > Date.now()) return hit;
  return new Response(JSON.stringify({ error: "picture not cached" }), {
    status: 404,
    headers: { "content-type": "application/json" },
  });
}

async function shell(event) {
  const request = event.request;
  const remember = (source) => {
    if (event.resultingClientId) served.set(event.resultingClientId, source);
  };
  try {
    // Revalidate with the server (a cheap 304), so a new build never mixes
    // with an old file from the HTTP cache.
    const response = await fetch(request, { cache: "no-cache" });
    if (response.ok) {
      const copy = response.clone();
      event.waitUntil(caches.open(SHELL).then((cache) => cache.put(request, copy)));
    }
    remember("sw-network");
    return response;
  } catch (e) {
    const cache = await caches.open(SHELL);
    const hit =
      (await cache.match(request, { ignoreSearch: true })) ||
      (request.mode === "navigate" ? await cache.match("./index.html") : undefined);
    if (!hit) throw e;
    remember("sw-cache");
    return hit;
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/pictures/")) {
    event.respondWith(picture(request));
    return;
  }
  if (url.pathname.startsWith("/api/") || url.pathname === "/metrics" || url.pathname === "/dashboard") return;
  event.respondWith(shell(event));
});
