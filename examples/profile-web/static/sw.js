// Service worker: keeps the app shell (page, JS glue, wasm) in the Cache API so
// the page loads offline. Network first, so a new build is picked up when
// online; the cache answers when the network does not. The API is never cached
// here (pictures have their own tiers in the page).
const SHELL = "profile-web-shell-v1";
const FILES = ["./", "./index.html", "./profile_web.js", "./profile_web_bg.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(SHELL).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/api/") || url.pathname === "/metrics") return;
  event.respondWith(
    fetch(request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          event.waitUntil(caches.open(SHELL).then((cache) => cache.put(request, copy)));
        }
        return response;
      })
      .catch(() =>
        caches.open(SHELL).then((cache) =>
          cache.match(request, { ignoreSearch: true }).then(
            (hit) => hit || (request.mode === "navigate" ? cache.match("./index.html") : Response.error()),
          ),
        ),
      ),
  );
});
