// The page of `imgsearch serve`: search by photo, then browse similar or cheaper products.
// Plain JavaScript, no framework, no build step. Everything the API returns is shown with textContent.
"use strict";

(function () {
  const K = 8;
  const PLACEHOLDER = "/static/placeholder.svg";

  const $ = (id) => document.getElementById(id);
  const el = {
    drop: $("drop"),
    file: $("file"),
    preview: $("preview"),
    filters: $("filters"),
    category: $("category"),
    maxPrice: $("max-price"),
    soldOut: $("include-sold-out"),
    cheaper: $("cheaper"),
    status: $("status"),
    current: $("current"),
    message: $("message"),
    loading: $("loading"),
    results: $("results"),
    hint: $("result-hint"),
    health: $("health"),
  };

  // What is shown: {kind: "photo", file} or {kind: "similar" | "cheaper", product}; null before any search.
  let view = null;
  let request = 0; // number of the latest request; answers to older ones are dropped
  let inFlight = null; // AbortController of the latest request
  let previewUrl = null;
  let photos = 0; // number of the photo shown, so that a request's key tells two uploads apart
  let lastKey = null; // what the latest request asked

  // --- formatting ------------------------------------------------------------------------------------------

  function formatPrice(price) {
    return price === null || price === undefined ? "no price" : Number(price).toFixed(2);
  }

  function formatDistance(distance) {
    const d = Number(distance);
    return (Math.abs(d) < 0.00005 ? 0 : d).toFixed(4); // never "-0.0000"
  }

  function photoUrl(image) {
    if (!image) return PLACEHOLDER;
    if (/^https?:\/\//i.test(image)) return image;
    return "/photos?ref=" + encodeURIComponent(image);
  }

  function productPath(sku, what) {
    // The whole SKU as one encoded segment: the app's {sku:path} route decodes %2F back to "/", and the
    // browser cannot normalise away "." or ".." segments of a SKU.
    return "/products/" + encodeURIComponent(sku) + "/" + what;
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // A product's photo; a neutral placeholder when it has none or the service cannot show it.
  function picture(image, title) {
    const img = node("img");
    const missing = () => {
      img.alt = "No photo of " + title;
      img.classList.add("missing");
    };
    img.alt = "Photo of " + title;
    img.loading = "lazy";
    img.decoding = "async";
    img.addEventListener("error", function onError() {
      img.removeEventListener("error", onError);
      img.src = PLACEHOLDER;
      missing();
    });
    img.src = photoUrl(image);
    if (!image) missing();
    return img;
  }

  // --- the filters -----------------------------------------------------------------------------------------

  function maxPrice() {
    const raw = el.maxPrice.value.trim();
    return raw === "" ? null : raw;
  }

  function filterParams(params) {
    if (el.category.value) params.append("category", el.category.value);
    params.append("in_stock_only", el.soldOut.checked ? "false" : "true");
    const price = maxPrice();
    if (price !== null) params.append("max_price", price);
    return params;
  }

  // --- requests --------------------------------------------------------------------------------------------

  async function errorLine(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string" && body.error) return body.error.split("\n")[0];
    } catch (_) {
      // not JSON: fall through to the status line
    }
    return "the service answered " + response.status + (response.statusText ? " " + response.statusText : "");
  }

  function setState(state) {
    el.results.dataset.state = state;
    el.results.setAttribute("aria-busy", state === "loading" ? "true" : "false");
    el.loading.hidden = state !== "loading";
  }

  function showMessage(text, kind) {
    el.message.textContent = text || "";
    el.message.hidden = !text;
    el.message.className = "message" + (kind ? " " + kind : "");
  }

  // Runs one search and shows its results; a newer search makes the answer of this one irrelevant.
  async function run(key, url, init, options) {
    lastKey = key;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const number = ++request;
    el.results.dataset.request = String(number);
    setState("loading");
    showMessage("");
    let rows;
    try {
      const response = await fetch(url, { ...init, signal: controller.signal });
      if (number !== request) return;
      if (!response.ok) {
        const line = await errorLine(response);
        if (number !== request) return;
        render([]);
        showMessage(line, "error");
        setState("error");
        lastKey = null; // asking again may help (a busy model)
        return;
      }
      rows = await response.json();
    } catch (err) {
      if (number !== request || (err && err.name === "AbortError")) return;
      render([]);
      showMessage("cannot reach the search service; is it running?", "error");
      setState("error");
      lastKey = null;
      return;
    }
    if (number !== request) return;
    if (options && options.keep) rows = rows.filter(options.keep);
    if (options && options.limit) rows = rows.slice(0, options.limit);
    render(rows);
    if (rows.length === 0) {
      showMessage(options && options.empty ? options.empty : "No products match the filters.", "empty");
      setState("empty");
    } else {
      setState("done");
    }
    if (options && options.focus) el.status.focus();
  }

  // Each search as {key, url, init, options}: the key says what it asks, so that the same question is not asked
  // twice in a row (Enter in the price box fires both change and submit).

  function photoQuery(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("k", String(K));
    if (el.category.value) form.append("category", el.category.value);
    form.append("in_stock_only", el.soldOut.checked ? "false" : "true");
    const price = maxPrice();
    if (price !== null) form.append("max_price", price);
    const key = ["photo", photos, el.category.value, el.soldOut.checked, price].join("|");
    return { key: key, url: "/search", init: { method: "POST", body: form }, options: {} };
  }

  function productQuery(product, kind) {
    if (kind === "cheaper") {
      // The endpoint has no price ceiling: ask for more and keep those under it, so the filter still holds.
      // (Its answers are always in stock and in the product's category.)
      const price = maxPrice();
      const params = new URLSearchParams({ k: String(price === null ? K : K * 6) });
      const url = productPath(product.sku, "cheaper") + "?" + params;
      return {
        key: ["cheaper", url, price].join("|"),
        url: url,
        init: {},
        options: {
          keep: price === null ? null : (r) => r.price !== null && r.price <= Number(price),
          limit: K,
          empty: "No cheaper product in stock in the same category" + (price === null ? "." : " under that price."),
        },
      };
    }
    const url = productPath(product.sku, "similar") + "?" + filterParams(new URLSearchParams({ k: String(K) }));
    return { key: "similar|" + url, url: url, init: {}, options: {} };
  }

  function searchPhoto(file) {
    const q = photoQuery(file);
    setStatus("Results for photo " + file.name);
    showCurrent(null);
    return run(q.key, q.url, q.init, q.options);
  }

  function searchProduct(product, kind, focus) {
    const q = productQuery(product, kind);
    view = { kind: kind, product: product };
    showCurrent(product);
    setStatus((kind === "cheaper" ? "Cheaper than " : "Similar to ") + product.sku);
    return run(q.key, q.url, q.init, { ...q.options, focus: focus });
  }

  // Runs again whatever is shown, with the current filters (unless exactly that is being or was just shown).
  function rerun() {
    if (!view) return;
    if (view.kind === "photo") {
      if (photoQuery(view.file).key !== lastKey) searchPhoto(view.file);
      return;
    }
    const kind = el.cheaper.checked ? "cheaper" : "similar";
    if (productQuery(view.product, kind).key !== lastKey) searchProduct(view.product, kind, false);
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // --- rendering -------------------------------------------------------------------------------------------

  function tile(row) {
    const item = node("li");
    const button = node("button", "result" + (row.in_stock ? "" : " sold-out"));
    button.type = "button";
    button.dataset.sku = row.sku;
    button.dataset.rank = String(row.rank);
    button.setAttribute("aria-describedby", "result-hint");
    const title = row.name || row.sku;

    const frame = node("span", "frame");
    frame.appendChild(picture(row.image, title));
    if (!row.in_stock) frame.appendChild(node("span", "badge", "sold out"));
    button.appendChild(frame);

    const body = node("span", "body");
    body.appendChild(node("span", "name", title));
    body.appendChild(node("span", "sku", row.sku));
    const line = node("span", "line");
    line.appendChild(node("span", "price", formatPrice(row.price)));
    line.appendChild(node("span", "stock " + (row.in_stock ? "in" : "out"), row.in_stock ? "in stock" : "sold out"));
    body.appendChild(line);
    const meta = node("span", "meta");
    if (row.category) meta.appendChild(node("span", "category", row.category));
    const distance = node("span", "distance-field");
    distance.appendChild(node("span", "label", "distance "));
    distance.appendChild(node("span", "distance", formatDistance(row.distance)));
    meta.appendChild(distance);
    body.appendChild(meta);
    button.appendChild(body);

    button.addEventListener("click", () => {
      searchProduct(row, el.cheaper.checked ? "cheaper" : "similar", true);
    });
    item.appendChild(button);
    return item;
  }

  function render(rows) {
    el.results.replaceChildren(...rows.map(tile));
  }

  function showCurrent(product) {
    el.current.replaceChildren();
    el.current.hidden = !product;
    if (!product) return;
    const button = node("button", "current-product");
    button.type = "button";
    button.dataset.sku = product.sku;
    button.setAttribute("aria-describedby", "result-hint");
    const title = product.name || product.sku;
    button.appendChild(picture(product.image, title));
    const text = node("span", "current-text");
    text.appendChild(node("span", "current-name", title));
    text.appendChild(node("span", "current-sku", product.sku));
    text.appendChild(node("span", "current-price", formatPrice(product.price)));
    button.appendChild(text);
    button.addEventListener("click", () => {
      searchProduct(product, el.cheaper.checked ? "cheaper" : "similar", true);
    });
    el.current.appendChild(button);
  }

  function updateHint() {
    el.hint.textContent = el.cheaper.checked
      ? "Choose a product to see cheaper products in stock that look like it."
      : "Choose a product to see products that look like it.";
  }

  // --- the photo -------------------------------------------------------------------------------------------

  function usePhoto(file) {
    if (!file) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    el.preview.src = previewUrl;
    el.preview.alt = "The photo searched: " + file.name;
    el.preview.hidden = false;
    el.drop.classList.add("has-photo");
    view = { kind: "photo", file: file };
    photos += 1;
    searchPhoto(file);
  }

  el.preview.addEventListener("error", () => {
    // Not an image the browser can show (the service will say why it cannot search it either).
    el.preview.hidden = true;
    el.drop.classList.remove("has-photo");
  });

  el.file.addEventListener("change", () => {
    usePhoto(el.file.files && el.file.files[0]);
  });

  ["dragenter", "dragover"].forEach((type) => {
    el.drop.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      el.drop.classList.add("over");
    });
  });
  ["dragleave", "dragend"].forEach((type) => {
    el.drop.addEventListener(type, () => el.drop.classList.remove("over"));
  });
  el.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    el.drop.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) usePhoto(files[0]);
  });
  // A photo dropped beside the drop zone must not replace the page with the photo. (The drop zone is the file
  // input's label: the input itself, visually hidden, takes the keyboard focus and opens the file chooser.)
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  // --- filters ---------------------------------------------------------------------------------------------

  el.category.addEventListener("change", rerun);
  el.soldOut.addEventListener("change", rerun);
  el.maxPrice.addEventListener("change", rerun);
  el.cheaper.addEventListener("change", () => {
    updateHint();
    if (view && view.kind !== "photo") rerun();
  });
  el.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    rerun();
  });

  // --- start -----------------------------------------------------------------------------------------------

  async function loadCategories() {
    try {
      const response = await fetch("/categories");
      if (!response.ok) return;
      const rows = await response.json();
      for (const row of rows) {
        const option = node("option", null, row.category + " (" + row.products + ")");
        option.value = row.category;
        el.category.appendChild(option);
      }
    } catch (_) {
      // the health line says what is wrong
    }
  }

  async function checkHealth() {
    try {
      const response = await fetch("/healthz");
      const body = await response.json();
      if (body.status === "ok") {
        el.health.textContent = "service ok";
        el.health.className = "health ok";
      } else {
        el.health.textContent = "service unavailable" + (body.error ? ": " + body.error : "");
        el.health.className = "health bad";
      }
    } catch (_) {
      el.health.textContent = "service unreachable";
      el.health.className = "health bad";
    }
  }

  updateHint();
  loadCategories();
  checkHealth();
})();
