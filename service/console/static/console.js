// The review console's few behaviours: label search, keyboard shortcuts, claim countdown.
// Progressive enhancement only: every action also works as a plain form without this script.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const serverNow = parseFloat(document.body.dataset.now || "0");
  const skew = serverNow ? serverNow - Date.now() / 1000 : 0; // server clock minus ours
  const $ = (selector) => document.querySelector(selector);
  const help = $("#help");

  function typing(target) {
    return target instanceof HTMLElement &&
      (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName) &&
        !["checkbox", "radio", "submit", "button"].includes(target.type));
  }
  function submitForm(form) {
    if (!form) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }
  function toggleHelp(show) {
    if (help) help.hidden = show === undefined ? !help.hidden : !show;
  }
  const closeHelp = $("#help-close");
  if (closeHelp) closeHelp.addEventListener("click", () => toggleHelp(false));

  // -- the item page -------------------------------------------------------------------------
  const decision = $("#decision");
  const search = $("#label-search");
  const nothing = $("#nothing");
  const formError = $("#form-error");
  const labels = () => Array.from(document.querySelectorAll('#tree input[name="label"]'));

  function showError(text) {
    if (!formError) return;
    formError.textContent = text;
    formError.hidden = !text;
  }
  const chosen = $("#chosen");
  function showChosen() {
    if (!chosen) return;
    chosen.replaceChildren();
    const names = labels().filter((box) => box.checked).map((box) => box.value);
    if (nothing && nothing.checked) {
      chosen.textContent = "Decision: nothing objectionable";
      return;
    }
    if (names.length) chosen.append("Chosen: ");
    for (const name of names) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = name;
      chosen.append(chip);
    }
  }
  function filter(query) {
    const q = query.trim().toLowerCase();
    const items = Array.from(document.querySelectorAll("#tree li")).reverse(); // children first
    for (const li of items) {
      const own = q !== "" && li.dataset.label.toLowerCase().includes(q);
      const child = Array.from(li.querySelectorAll(":scope > ul > li")).some((c) => !c.hidden);
      li.classList.toggle("match", own);
      li.hidden = q !== "" && !own && !child;
    }
  }
  if (decision) {
    if (search) {
      search.addEventListener("input", () => filter(search.value));
      search.addEventListener("keydown", (event) => {
        if (event.key === "Enter") {
          event.preventDefault();
          const first = document.querySelector("#tree li.match > label > input");
          if (first) { first.checked = !first.checked; first.dispatchEvent(new Event("change", { bubbles: true })); }
        } else if (event.key === "Escape") {
          search.value = ""; filter(""); search.blur();
        }
      });
    }
    document.getElementById("tree").addEventListener("change", (event) => {
      if (event.target.checked && nothing) nothing.checked = false;
      showError("");
      showChosen();
    });
    if (nothing) {
      nothing.addEventListener("change", () => {
        if (nothing.checked) labels().forEach((box) => { box.checked = false; });
        showError("");
        showChosen();
      });
    }
    decision.addEventListener("submit", (event) => {
      const chosen = labels().some((box) => box.checked);
      if (!chosen && !(nothing && nothing.checked)) {
        event.preventDefault();
        showError("Choose the labels that apply, or 'nothing objectionable'.");
        return;
      }
      const button = $("#submit");
      if (button) button.disabled = true; // no double submissions
    });
    const subject = $("#subject");
    if (subject) {
      subject.addEventListener("error", () => {
        const note = document.createElement("div");
        note.className = "noimage";
        note.textContent = "The image could not be loaded (moved, deleted, or refused by the URL rules).";
        subject.replaceWith(note);
      });
    }
  }

  const claim = $("#claim");
  if (claim) {
    const expires = parseFloat(claim.dataset.expires || "0");
    const tick = () => {
      const left = expires - (Date.now() / 1000 + skew);
      if (left <= 0) {
        claim.textContent = "claim run out: submitting still works unless someone else claims it";
        claim.classList.add("expired");
        return;
      }
      const m = Math.floor(left / 60), s = Math.floor(left % 60);
      claim.textContent = `claim: ${m}:${String(s).padStart(2, "0")} left`;
      setTimeout(tick, 1000);
    };
    if (expires) tick();
  }

  // -- shortcuts -------------------------------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const key = event.key;
    if (key === "?") { toggleHelp(); event.preventDefault(); return; }
    if (key === "Escape") { toggleHelp(false); return; }
    if (page === "item") {
      if (key === "a" && nothing) {
        nothing.checked = true;
        nothing.dispatchEvent(new Event("change"));
        event.preventDefault();
      } else if ((key === "r" || key === "/") && search) {
        search.focus(); search.select(); event.preventDefault();
      } else if (key === "s" || (key === "Enter" && !(event.target instanceof HTMLButtonElement))) {
        event.preventDefault();
        submitForm(decision);
      } else if (key === "n") {
        event.preventDefault();
        submitForm($("#skip"));
      }
    } else if (page === "queue" && key === "n") {
      event.preventDefault();
      submitForm($("#claim-next"));
    }
  });

  // The queue refreshes itself while nobody is typing, so new items show up.
  if (page === "queue") {
    setInterval(() => {
      if (document.visibilityState === "visible" && !typing(document.activeElement)) {
        window.location.replace("/queue");
      }
    }, 20000);
  }
})();
