// Trunk8 admin pages: menus, copy buttons, the link form, and uploads with a progress bar.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Navbar collapse and dropdowns (so the pages need no Bootstrap JavaScript).
  document.querySelectorAll("[data-toggle-target]").forEach((button) => {
    button.addEventListener("click", () => {
      const target = document.querySelector(button.dataset.toggleTarget);
      const open = target.classList.toggle("show");
      button.setAttribute("aria-expanded", String(open));
    });
  });
  document.querySelectorAll(".dropdown-toggle").forEach((toggle) => {
    toggle.addEventListener("click", (event) => {
      event.preventDefault();
      const menu = toggle.nextElementSibling;
      const open = !menu.classList.contains("show");
      document.querySelectorAll(".dropdown-menu.show").forEach((m) => m.classList.remove("show"));
      menu.classList.toggle("show", open);
      toggle.setAttribute("aria-expanded", String(open));
    });
  });
  document.addEventListener("click", (event) => {
    if (!event.target.closest(".dropdown")) {
      document.querySelectorAll(".dropdown-menu.show").forEach((m) => m.classList.remove("show"));
    }
  });
  document.querySelectorAll("[data-dismiss-alert]").forEach((button) => {
    button.addEventListener("click", () => button.closest(".alert").remove());
  });

  // Copy buttons: the full short URL to the clipboard.
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const text = button.dataset.copy;
      try {
        await navigator.clipboard.writeText(text);
      } catch {
        const field = document.createElement("textarea");
        field.value = text;
        document.body.append(field);
        field.select();
        document.execCommand("copy");
        field.remove();
      }
      // Only the label and icon change, so the button keeps its size and markup.
      const label = button.querySelector("[data-copy-label]") || button;
      const icon = button.querySelector(".bi");
      const text0 = label.textContent;
      label.textContent = "Copied!";
      icon?.classList.replace("bi-clipboard", "bi-clipboard-check");
      setTimeout(() => {
        label.textContent = text0;
        icon?.classList.replace("bi-clipboard-check", "bi-clipboard");
      }, 1500);
    });
  });

  // Delete buttons ask first.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  const form = document.querySelector("#link-form");
  if (form) setUpLinkForm(form);
  document.querySelectorAll("form[data-upload-form]").forEach(setUpUploadProgress);
});

function setUpLinkForm(form) {
  const sections = form.querySelectorAll("[data-section]");
  const showSections = () => {
    const type = (form.querySelector("input[name=link_type]:checked") || {}).value || "redirect";
    sections.forEach((s) => { s.hidden = s.dataset.section !== type; });
    for (const kind of ["markdown", "html"]) {
      const mode = (form.querySelector(`input[name=${kind}_input_type]:checked`) || {}).value || "file";
      form.querySelector(`[data-input=${kind}-file]`).hidden = mode !== "file";
      form.querySelector(`[data-input=${kind}-text]`).hidden = mode === "file";
    }
  };
  form.addEventListener("change", showSections);
  showSections();

  // A new expiry defaults to a week from now, in the browser's local time (as Trunk8).
  const expiry = form.querySelector("#expiration_date");
  const enable = form.querySelector("#enable_expiration");
  const syncExpiry = () => {
    expiry.disabled = !enable.checked;
    if (enable.checked && !expiry.value) {
      const week = new Date(Date.now() + 7 * 864e5);
      week.setMinutes(week.getMinutes() - week.getTimezoneOffset());
      expiry.value = week.toISOString().slice(0, 16);
    }
  };
  enable.addEventListener("change", syncExpiry);
  syncExpiry();
  // Its uploads get their progress bar from the `form[data-upload-form]` pass, like every
  // upload form: set up twice, each submit sent the whole form twice, and the losing copy's
  // "code already exists" page could replace the result (the flaky browser test).
}

// Uploads go through XMLHttpRequest for a progress bar and a cancel button; once the
// bytes are sent, the bar says the server is working (a restore is checked and applied).
function setUpUploadProgress(form) {
  if (form.dataset.uploadReady) return; // one XMLHttpRequest per submit, never two
  form.dataset.uploadReady = "yes";
  const progress = form.querySelector(".upload-progress");
  const bar = progress.querySelector(".progress-bar");
  let request = null;
  progress.querySelector("[data-cancel-upload]").addEventListener("click", () => {
    if (request) request.abort();
  });
  form.addEventListener("submit", (event) => {
    const files = [...form.querySelectorAll("input[type=file]")]
      .filter((input) => !input.closest("[hidden]") && input.files.length);
    if (!files.length || !window.XMLHttpRequest) return;
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    progress.hidden = false;
    request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      const percent = Math.round((100 * e.loaded) / e.total);
      bar.style.width = `${percent}%`;
      bar.textContent = percent < 100 ? `${percent}%` : (form.dataset.processing || "Saving…");
      progress.querySelector(".progress").setAttribute("aria-valuenow", String(percent));
    });
    const reset = (message) => {
      submit.disabled = false;
      progress.hidden = true;
      bar.style.width = "0%";
      bar.textContent = "0%";
      request = null;
      if (message) window.alert(message);
    };
    request.addEventListener("abort", () => reset("Upload cancelled."));
    request.addEventListener("error", () => reset("The upload failed; check the connection and try again."));
    request.addEventListener("load", () => {
      // Show what the server answered (its flashes are in it), at the URL it ended on.
      const url = request.responseURL;
      document.open();
      document.write(request.responseText);
      document.close();
      if (url) window.history.replaceState(null, "", url);
    });
    request.send(new FormData(form));
  });
}
