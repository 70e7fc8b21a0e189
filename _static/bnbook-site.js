/* Site fixes for the book (loaded on every page: Jupyter Book 1 adds every .js file of _static/).
   tests/site checks each fix in Chromium at 1280 px and 390 px. */
"use strict";

(() => {
  /* Sidebar toggles. sphinx-book-theme 1.3.0 (fixSidebarToggle) and pydata-sphinx-theme 0.17.1
     (setupMobileSidebarKeyboardHandlers) attach their click handlers to document.querySelector(".primary-toggle")
     and (".secondary-toggle"): the FIRST such button, which is the navbar button of pydata-sphinx-theme that
     sphinx-book-theme hides. The buttons readers see (in the article header) get no handler, so the chapter list
     and the page contents cannot be opened (pydata/pydata-sphinx-theme#2451, executablebooks/sphinx-book-theme#935,
     both open). Fix: a click on any other toggle of the same kind is forwarded to the first one, which then does
     what the themes intend (wide screens: collapse/expand the sidebar; narrow screens: open it as a dialog). */
  const forwardToggleClicks = (selector) => {
    const buttons = Array.from(document.querySelectorAll(selector));
    const bound = buttons[0];
    for (const button of buttons.slice(1)) {
      button.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        bound.click();
      });
    }
  };

  /* Figures. Each image in a cell output or a figure becomes a link to the image itself (opened at full size,
     where a phone can zoom), and gets its natural width as a CSS variable so that bnbook-site.css can keep it
     at >= 60 % of natural size on narrow screens. */
  const MIN_SCALE = 0.6;
  const linkFigures = () => {
    const images = document.querySelectorAll(".bd-article .cell_output img, .bd-article figure img");
    for (const img of images) {
      if (img.closest("a")) continue;
      const link = document.createElement("a");
      link.href = img.currentSrc || img.src;
      link.className = "bnbook-figure-link";
      link.title = "Open the figure at full size";
      img.parentNode.insertBefore(link, img);
      link.appendChild(img);
      const setMinWidth = () => {
        if (img.naturalWidth) {
          img.style.setProperty("--bnbook-min-width", `${Math.round(img.naturalWidth * MIN_SCALE)}px`);
        }
      };
      if (img.complete) setMinWidth();
      else img.addEventListener("load", setMinWidth, { once: true });
    }
  };

  const init = () => {
    forwardToggleClicks(".primary-toggle");
    forwardToggleClicks(".secondary-toggle");
    linkFigures();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
