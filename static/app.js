// Relayboard dashboard behaviour. Loaded as a file: the CSP forbids inline scripts.
(function () {
  "use strict";

  // Adaptive polling (healthchecks' adaptive-setinterval): an element with data-poll="ms"
  // and hx-trigger="poll" is refreshed every ms, five times slower while the tab is hidden.
  // A partial stops polling itself by rendering without data-poll.
  function schedule(el) {
    var ms = parseInt(el.getAttribute("data-poll"), 10);
    if (!ms || el.__rbPolling) return;
    el.__rbPolling = true;
    function tick() {
      if (!document.body.contains(el) || !el.hasAttribute("data-poll")) return;
      // No poll while a row is dragged or an action from inside is still on its way:
      // the action's own answer brings the fresh rows.
      var busy = el.__rbDragging || el.querySelector("[data-sortable].dragging, .htmx-request");
      if (!busy) htmx.trigger(el, "poll");
      setTimeout(tick, document.hidden ? ms * 5 : ms);
    }
    setTimeout(tick, document.hidden ? ms * 5 : ms);
  }

  // Drag-and-drop reordering (SortableJS): [data-sortable] holds rows with data-id;
  // on drop, its form (data-sortable-form) is sent with the new order in "order".
  function sortable(el) {
    if (el.__rbSortable || typeof Sortable === "undefined") return;
    el.__rbSortable = true;
    Sortable.create(el, {
      handle: ".drag-handle",
      animation: 120,
      // A poll must not replace the rows while one is being dragged.
      onStart: function () { el.__rbDragging = true; el.classList.add("dragging"); },
      onEnd: function () {
        el.__rbDragging = false;
        el.classList.remove("dragging");
        var form = document.getElementById(el.getAttribute("data-sortable-form"));
        var ids = Array.prototype.map.call(el.querySelectorAll("[data-id]"), function (row) {
          return row.getAttribute("data-id");
        });
        form.querySelector("input[name=order]").value = ids.join(",");
        htmx.trigger(form, "submit");
      },
    });
  }

  function copyButtons(root) {
    root.querySelectorAll("[data-copy]").forEach(function (button) {
      if (button.__rbCopy) return;
      button.__rbCopy = true;
      button.addEventListener("click", function () {
        var source = document.getElementById(button.getAttribute("data-copy"));
        navigator.clipboard.writeText(source.value || source.textContent).then(function () {
          button.textContent = "Copied";
        });
      });
    });
  }

  function scan(root) {
    if (root.matches && root.matches("[data-poll]")) schedule(root);
    root.querySelectorAll("[data-poll]").forEach(schedule);
    if (root.matches && root.matches("[data-sortable]")) sortable(root);
    root.querySelectorAll("[data-sortable]").forEach(sortable);
    copyButtons(root);
  }

  document.addEventListener("htmx:load", function (event) { scan(event.detail.elt); });
  // Keyboard users keep their place: a control with an id that had the focus before a swap
  // (a move, a toggle, a poll) has it again after, whichever swap lands last.
  var focusedId = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    var active = document.activeElement;
    var target = event.detail.target;
    if (active && active.id && target && target.contains(active)) focusedId = active.id;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!focusedId) return;
    var active = document.activeElement;
    if (!active || active === document.body) {
      var again = document.getElementById(focusedId);
      if (again) again.focus();
    }
    focusedId = null;
  });
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && (target.__rbDragging || (target.querySelector && target.querySelector("[data-sortable].dragging")))) {
      event.detail.shouldSwap = false;  // a poll that lands mid-drag is dropped; the next one shows the new order
    }
  });
  document.addEventListener("DOMContentLoaded", function () { scan(document.body); });

  // Flash messages sent with fragments (HX-Trigger: {"flash": {...}}) join the page's list.
  document.addEventListener("flash", function (event) {
    var box = document.getElementById("flashes");
    if (!box || !event.detail) return;
    var note = document.createElement("article");
    note.className = "flash flash-" + (event.detail.category || "info");
    note.setAttribute("role", event.detail.category === "error" ? "alert" : "status");
    note.textContent = event.detail.text || event.detail.value || "";
    box.replaceChildren(note);
  });

  // A session that ended mid-poll: htmx gets 401 with HX-Redirect and follows it.
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.getElementById("flashes");
    if (!box || event.detail.xhr.status === 401) return;
    var note = document.createElement("article");
    note.className = "flash flash-error";
    note.setAttribute("role", "alert");
    note.textContent = "The server answered " + event.detail.xhr.status + ": " +
      (event.detail.xhr.responseText || "").replace(/<[^>]*>/g, " ").trim().slice(0, 200);
    box.replaceChildren(note);
  });
})();
