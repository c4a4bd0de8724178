// Service worker of the profile-picture demo (see the README):
// - the app shell in a cache named after the build, network first;
// - `/pictures/{id}` from the page's Cache API tier, online or not;
// - static routes send other origins (presigned URLs) and the API to the
//   network without waking this worker.
const BUILD = "__BUILD__";
const SHELL_PREFIX = "profile-web-shell-";
const SHELL = SHELL_PREFIX + BUILD;
const PICTURES = "profile-pictures";
const EXPIRES_HEADER = "x-cache-browser-expires-at";
const FILES = ["./", "./index.html", "./profile_web.js", "./profile_web_bg.wasm"];
// client id → "sw-cache" | "sw-network": how each page was served.
const served = new Map();
// client id → fetches passed on unanswered (the static routes avoid them).
const passedOn = new Map();
const passOn = (event) => passedOn.set(event.clientId, (passedOn.get(event.clientId) || 0) + 1);

// First match wins; the rest goes to the fetch handler.
function staticRoutes() {
  const here = new URL(self.registration.scope);
  const sameOrigin = new URLPattern({
    protocol: here.protocol.slice(0, -1),
    hostname: here.hostname,
    port: here.port,
  });
  return [
    { condition: { urlPattern: "/pictures/*" }, source: "fetch-event" },
    { condition: { not: { urlPattern: sameOrigin } }, source: "network" },
    {
      condition: {
        or: [{ urlPattern: "/api/*" }, { urlPattern: "/metrics" }, { urlPattern: "/dashboard" }],
      },
      source: "network",
    },
  ];
}

self.addEventListener("install", (event) => {
  // Without them the fetch handler still handles everything.
  if (typeof event.addRoutes === "function" && typeof URLPattern === "function") {
    try {
      event.waitUntil(
        Promise.resolve(event.addRoutes(staticRoutes())).catch((e) =>
          console.warn("service worker static routes:", e),
        ),
      );
    } catch (e) {
      console.warn("service worker static routes:", e);
    }
  }
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
    event.source.postMessage({
      type: "page-source",
      source: served.get(event.source.id) || "unknown",
      build: BUILD,
      passed_on: passedOn.get(event.source.id) || 0,
    });
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
  if (request.method !== "GET" || url.origin !== self.location.origin) {
    passOn(event);
    return;
  }
  if (url.pathname.startsWith("/pictures/")) {
    event.respondWith(picture(request));
    return;
  }
  if (url.pathname.startsWith("/api/") || url.pathname === "/metrics" || url.pathname === "/dashboard") {
    passOn(event);
    return;
  }
  event.respondWith(shell(event));
});
