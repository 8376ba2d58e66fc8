// The page of `imgsearch serve`: search by photo (or by a box drawn on it), then browse similar or cheaper products.
// Plain JavaScript, no framework, no build step. Everything the API returns is shown with textContent.
"use strict";

(function () {
  const K = 8;
  const PLACEHOLDER = "/static/placeholder.svg";

  const $ = (id) => document.getElementById(id);
  const el = {
    query: $("query"),
    drop: $("drop"),
    dropText: $("drop-text"),
    file: $("file"),
    photo: $("photo"),
    stage: $("stage"),
    preview: $("preview"),
    cropBox: $("crop-box"),
    matches: $("matches"),
    cropHelp: $("crop-help"),
    wholePhoto: $("whole-photo"),
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
    keyPanel: $("key-panel"),
    apiKey: $("api-key"),
    more: $("more"),
    words: $("words"),
    wordsInput: $("words-input"),
  };
  const KEY_STORE = "imgsearch.key";

  // What is shown: {kind: "photo", file} or {kind: "similar" | "cheaper", product}; null before any search.
  let view = null;
  let request = 0; // number of the latest request; answers to older ones are dropped
  let inFlight = null; // AbortController of the latest request
  let previewUrl = null;
  let photos = 0; // number of the photo shown, so that a request's key tells two uploads apart
  let lastKey = null; // what the latest request asked
  // The box drawn on the photo: [left, top, right, bottom] in the photo's own pixels (as shown upright, right and
  // bottom exclusive), sent as the search's crop; null searches the whole photo.
  let crop = null;
  let drawing = null; // the drag under way: {pointer, x0, y0, x1, y1} as fractions of the shown photo
  let photoFile = null; // the photo shown
  let matched = []; // the exact matches of the photo's results that have a box, outlined on the photo
  // The search whose results are shown, for "More results": {query: a function of the cursor that makes the next
  // page's {url, init}, cursor: the last result's}; null when there is no next page to ask for.
  let paging = null;

  // --- formatting ------------------------------------------------------------------------------------------

  function formatPrice(price) {
    return price === null || price === undefined ? "no price" : Number(price).toFixed(2);
  }

  function formatDistance(distance) {
    const d = Number(distance);
    return (Math.abs(d) < 0.00005 ? 0 : d).toFixed(4); // never "-0.0000"
  }

  // The shop's attributes of a product as one line: "brand Acme · sizes 38, 39".
  function formatAttributes(attributes) {
    return Object.entries(attributes || {})
      .map(([name, value]) => name + " " + (Array.isArray(value) ? value.join(", ") : String(value)))
      .join(" · ");
  }

  function words() {
    return el.wordsInput.value.trim();
  }

  function photoUrl(image) {
    if (!image) return PLACEHOLDER;
    if (/^https?:\/\//i.test(image)) return image;
    return "/photos?ref=" + encodeURIComponent(image);
  }

  // The API key typed in the page (services with keys in use refuse requests without one): sent with every
  // request, and kept for this tab only (sessionStorage), never in a URL.
  function authHeaders() {
    const key = el.apiKey.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // Shows a catalogue photo: a plain <img> cannot send the key, so with a key the photo is fetched with it.
  function showPhoto(img, url) {
    if (!el.apiKey.value.trim() || !url.startsWith("/photos")) {
      img.src = url;
      return;
    }
    fetch(url, { headers: authHeaders() })
      .then((response) => (response.ok ? response.blob() : Promise.reject(new Error("HTTP " + response.status))))
      .then((blob) => {
        const local = URL.createObjectURL(blob);
        img.addEventListener("load", () => URL.revokeObjectURL(local), { once: true });
        img.src = local;
      })
      .catch(() => img.dispatchEvent(new Event("error")));
  }

  function productPath(sku, what) {
    // The whole SKU as one encoded segment: the app's {sku:path} route decodes %2F back to "/", and the
    // browser cannot normalise away "." or ".." segments of a SKU.
    return "/v1/products/" + encodeURIComponent(sku) + "/" + what;
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
    showPhoto(img, photoUrl(image));
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
    showMore(null);
    setState("loading");
    showMessage("");
    let rows;
    try {
      const headers = { ...((init && init.headers) || {}), ...authHeaders() };
      const response = await fetch(url, { ...init, headers: headers, signal: controller.signal });
      if (number !== request) return;
      if (!response.ok) {
        if (response.status === 401 || response.status === 403) el.keyPanel.open = true;
        const line = await errorLine(response);
        if (number !== request) return;
        render([]);
        showMatches([]);
        showMessage(line, "error");
        setState("error");
        lastKey = null; // asking again may help (a busy model)
        return;
      }
      rows = await response.json();
    } catch (err) {
      if (number !== request || (err && err.name === "AbortError")) return;
      render([]);
      showMatches([]);
      showMessage("cannot reach the search service; is it running?", "error");
      setState("error");
      lastKey = null;
      return;
    }
    if (number !== request) return;
    if (options && options.keep) rows = rows.filter(options.keep);
    if (options && options.limit) rows = rows.slice(0, options.limit);
    render(rows);
    if (options && options.next && rows.length === K) showMore({ query: options.next, cursor: rows[K - 1].cursor });
    showMatches(options && options.photo ? rows : []);
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
    if (crop) form.append("crop", crop.join(","));
    if (words()) form.append("text", words()); // ranked with the photo
    const key = ["photo", photos, el.category.value, el.soldOut.checked, price, crop ? crop.join(",") : "", words()]
      .join("|");
    // The next page: the same form with the last result's cursor.
    const next = (cursor) => {
      const again = new FormData();
      for (const [name, value] of form.entries()) again.append(name, value);
      again.append("cursor", cursor);
      return { url: "/v1/search", init: { method: "POST", body: again } };
    };
    return { key: key, url: "/v1/search", init: { method: "POST", body: form }, options: { photo: true, next: next } };
  }

  // A search by words alone (no photo): the API's JSON body.
  function wordsQuery(text) {
    const body = { text: text, k: K, in_stock_only: !el.soldOut.checked };
    if (el.category.value) body.category = el.category.value;
    const price = maxPrice();
    if (price !== null) body.max_price = Number(price);
    const init = (extra) => ({
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, ...extra }),
    });
    const next = (cursor) => ({ url: "/v1/search", init: init({ cursor: cursor }) });
    return {
      key: "words|" + JSON.stringify(body),
      url: "/v1/search",
      init: init({}),
      options: { next: next, empty: "No product matches these words and filters." },
    };
  }

  function searchWords(text) {
    const q = wordsQuery(text);
    view = { kind: "words", text: text };
    showMatches([]);
    showCurrent(null);
    setStatus("Results for the words " + text);
    return run(q.key, q.url, q.init, q.options);
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
    const next = (cursor) => ({ url: url + "&" + new URLSearchParams({ cursor: cursor }), init: {} });
    return { key: "similar|" + url, url: url, init: {}, options: { next: next } };
  }

  // Shows "More results" for a search with a next page (null hides it).
  function showMore(next) {
    paging = next;
    el.more.hidden = !next;
    el.more.disabled = false;
  }

  // The next page of the search shown, added after its results; a new search meanwhile drops the answer.
  async function more() {
    if (!paging) return;
    const number = request;
    const page = paging.query(paging.cursor);
    el.more.disabled = true;
    let rows;
    try {
      const headers = { ...(page.init.headers || {}), ...authHeaders() };
      const response = await fetch(page.url, { ...page.init, headers: headers });
      if (number !== request) return;
      if (!response.ok) {
        showMessage(await errorLine(response), "error");
        el.more.disabled = false;
        return;
      }
      rows = await response.json();
    } catch (err) {
      if (number !== request) return;
      showMessage("cannot reach the search service; is it running?", "error");
      el.more.disabled = false;
      return;
    }
    if (number !== request) return;
    el.results.append(...rows.map(tile));
    el.results.dataset.shown = String(el.results.children.length);
    showMore(rows.length === K ? { query: paging.query, cursor: rows[K - 1].cursor } : null);
  }

  function searchPhoto(file) {
    const q = photoQuery(file);
    setStatus("Results for " + (crop ? "the box drawn on photo " : "photo ") + file.name);
    showCurrent(null);
    return run(q.key, q.url, q.init, q.options);
  }

  function searchProduct(product, kind, focus) {
    const q = productQuery(product, kind);
    view = { kind: kind, product: product };
    showMatches([]); // the outlines answered the photo, not this product
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
    if (view.kind === "words") {
      if (wordsQuery(view.text).key !== lastKey) searchWords(view.text);
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
    button.dataset.match = row.match || "";
    if (row.match === "exact") {
      // Local features proved that the photo shows this very product.
      const points = row.inliers === null || row.inliers === undefined ? "" : String(row.inliers);
      const badge = node("span", "badge exact", "exact match");
      badge.setAttribute("role", "img");
      badge.setAttribute("aria-label", "exact match" + (points ? ", " + points + " matching points" : ""));
      badge.title = "Exact match: this very product is in your photo" +
        (points ? " (" + points + " points of its photo found in yours)" : "") +
        (row.box ? "; outlined on your photo" : "");
      badge.dataset.inliers = points;
      frame.appendChild(badge);
    }
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
    if (row.distance !== null && row.distance !== undefined) {
      // (A search by words alone measures no distance.)
      const distance = node("span", "distance-field");
      distance.appendChild(node("span", "label", "distance "));
      distance.appendChild(node("span", "distance", formatDistance(row.distance)));
      meta.appendChild(distance);
    }
    body.appendChild(meta);
    const attributes = formatAttributes(row.attributes);
    if (attributes) body.appendChild(node("span", "attributes", attributes));
    button.appendChild(body);

    button.addEventListener("click", () => {
      searchProduct(row, el.cheaper.checked ? "cheaper" : "similar", true);
    });
    if (row.match === "exact" && row.box) {
      // Pointing at the tile (or focusing it) picks out its outline on the photo.
      const highlight = (on) => {
        for (const outline of el.matches.children) {
          if (outline.dataset.sku === row.sku) outline.classList.toggle("active", on);
        }
      };
      button.addEventListener("mouseenter", () => highlight(true));
      button.addEventListener("mouseleave", () => highlight(false));
      button.addEventListener("focus", () => highlight(true));
      button.addEventListener("blur", () => highlight(false));
    }
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
    el.photo.hidden = false;
    el.drop.classList.add("has-photo");
    el.dropText.replaceChildren(node("strong", null, "Drop another photo"), " or press to choose one");
    drawing = null;
    crop = null;
    showCrop();
    showMatches([]);
    photoFile = file;
    view = { kind: "photo", file: file };
    photos += 1;
    searchPhoto(file);
  }

  el.preview.addEventListener("error", () => {
    // Not an image the browser can show (the service will say why it cannot search it either).
    el.photo.hidden = true;
    el.drop.classList.remove("has-photo");
  });
  el.preview.addEventListener("load", () => showMatches(matched));

  // --- the box drawn on the photo ----------------------------------------------------------------------------
  // Dragging across the photo (mouse, pen or finger) draws a box; the photo is then searched within it. The box is
  // kept in the photo's own pixels (naturalWidth x naturalHeight, what the service decodes) and shown in
  // percentages, so it stays in place whatever size the photo is shown at.

  const MIN_BOX = 6; // shown pixels: a smaller drag is a click, not a box

  function percent(value, whole) {
    return (Math.min(Math.max(value / whole, 0), 1) * 100).toFixed(3) + "%";
  }

  // Places an overlay over [left, top, right, bottom] in the photo's pixels.
  function place(overlay, box) {
    const w = el.preview.naturalWidth;
    const h = el.preview.naturalHeight;
    overlay.style.left = percent(box[0], w);
    overlay.style.top = percent(box[1], h);
    overlay.style.width = percent(Math.min(box[2], w) - Math.max(box[0], 0), w);
    overlay.style.height = percent(Math.min(box[3], h) - Math.max(box[1], 0), h);
  }

  function showCrop() {
    const box = drawing ? fractionsToPixels(drawing) : crop;
    el.cropBox.hidden = !box;
    if (box) place(el.cropBox, box);
    el.wholePhoto.setAttribute("aria-disabled", crop ? "false" : "true");
    el.cropHelp.textContent = crop
      ? "Searching the box you drew (" + (crop[2] - crop[0]) + " \u00d7 " + (crop[3] - crop[1]) +
        " pixels). Drag again to change it."
      : "Drag across the photo to search only part of it.";
  }

  // A drag's corners (fractions of the shown photo) as a box in the photo's pixels, whole pixels that hold it.
  function fractionsToPixels(d) {
    const w = el.preview.naturalWidth;
    const h = el.preview.naturalHeight;
    const left = Math.floor(Math.min(d.x0, d.x1) * w);
    const top = Math.floor(Math.min(d.y0, d.y1) * h);
    const right = Math.max(left + 1, Math.min(w, Math.ceil(Math.max(d.x0, d.x1) * w)));
    const bottom = Math.max(top + 1, Math.min(h, Math.ceil(Math.max(d.y0, d.y1) * h)));
    return [left, top, right, bottom];
  }

  // A new box (or none): the photo is searched again within it, even when similar products were shown.
  function setCrop(box) {
    crop = box;
    showCrop();
    if (!photoFile) return;
    view = { kind: "photo", file: photoFile };
    rerun(); // nothing when exactly this is being or was just asked
  }

  function pointAt(event) {
    const rect = el.preview.getBoundingClientRect();
    return {
      x: Math.min(Math.max((event.clientX - rect.left) / rect.width, 0), 1),
      y: Math.min(Math.max((event.clientY - rect.top) / rect.height, 0), 1),
    };
  }

  el.stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || !el.preview.naturalWidth || !el.preview.clientWidth) return;
    event.preventDefault(); // no image drag, no text selection
    const p = pointAt(event);
    drawing = { pointer: event.pointerId, x0: p.x, y0: p.y, x1: p.x, y1: p.y };
    el.stage.setPointerCapture(event.pointerId);
    el.photo.classList.add("drawing");
  });
  el.stage.addEventListener("pointermove", (event) => {
    if (!drawing || event.pointerId !== drawing.pointer) return;
    const p = pointAt(event);
    drawing.x1 = p.x;
    drawing.y1 = p.y;
    showCrop();
  });
  function endDrag(event, keep) {
    if (!drawing || event.pointerId !== drawing.pointer) return;
    const d = drawing;
    drawing = null;
    el.photo.classList.remove("drawing");
    if (el.stage.hasPointerCapture(event.pointerId)) el.stage.releasePointerCapture(event.pointerId);
    const big =
      Math.abs(d.x1 - d.x0) * el.preview.clientWidth >= MIN_BOX &&
      Math.abs(d.y1 - d.y0) * el.preview.clientHeight >= MIN_BOX;
    if (keep && big) {
      setCrop(fractionsToPixels(d));
    } else {
      showCrop(); // a click or a cancelled drag leaves the box as it was
    }
  }
  el.stage.addEventListener("pointerup", (event) => endDrag(event, true));
  el.stage.addEventListener("pointercancel", (event) => endDrag(event, false));

  el.wholePhoto.addEventListener("click", () => {
    if (crop) setCrop(null);
  });
  // Escape anywhere on the photo (the button included) also goes back to the whole photo.
  el.photo.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && crop) {
      event.preventDefault();
      setCrop(null);
    }
  });

  // The exact matches of a photo search that say where they are: outlined on the photo, named as in the tiles.
  function showMatches(rows) {
    matched = rows.filter((r) => r.match === "exact" && Array.isArray(r.box) && r.box.length === 4);
    el.matches.replaceChildren();
    if (!el.preview.naturalWidth) return; // not shown yet: drawn when it loads
    for (const row of matched) {
      const outline = node("div", "match-box");
      outline.dataset.sku = row.sku;
      place(outline, row.box);
      outline.classList.toggle("at-top", row.box[1] < el.preview.naturalHeight * 0.1); // no room for the name above
      outline.appendChild(node("span", "match-label", row.name || row.sku));
      el.matches.appendChild(outline);
    }
  }

  el.file.addEventListener("change", () => {
    usePhoto(el.file.files && el.file.files[0]);
  });

  // The whole photo section takes a dropped photo (the shown photo too), the drop zone shows it.
  ["dragenter", "dragover"].forEach((type) => {
    el.query.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      el.drop.classList.add("over");
    });
  });
  ["dragleave", "dragend"].forEach((type) => {
    el.query.addEventListener(type, () => el.drop.classList.remove("over"));
  });
  el.query.addEventListener("drop", (event) => {
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
  el.more.addEventListener("click", more);
  el.words.addEventListener("submit", (event) => {
    event.preventDefault();
    // With a photo shown, the words rank with it; without one (or once emptied), they search alone.
    if (view && view.kind === "photo") {
      rerun();
    } else if (words()) {
      searchWords(words());
    }
  });

  // --- start -----------------------------------------------------------------------------------------------

  async function loadCategories() {
    try {
      const response = await fetch("/categories", { headers: authHeaders() });
      if (response.status === 401) el.keyPanel.open = true;
      if (!response.ok) return;
      while (el.category.options.length > 1) el.category.remove(1);
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
      const response = await fetch("/readyz");
      const body = await response.json();
      if (body.status === "ok") {
        el.health.textContent = "service ok";
        el.health.className = "health ok";
      } else {
        el.health.textContent = "service unavailable" + (body.reason ? ": " + body.reason : "");
        el.health.className = "health bad";
      }
    } catch (_) {
      el.health.textContent = "service unreachable";
      el.health.className = "health bad";
    }
  }

  el.apiKey.value = sessionStorage.getItem(KEY_STORE) || "";
  el.keyPanel.open = el.apiKey.value !== "";
  el.apiKey.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, el.apiKey.value.trim());
    loadCategories();
    lastKey = null; // the same question, asked with another key
    rerun();
  });

  updateHint();
  loadCategories();
  checkHealth();
})();
