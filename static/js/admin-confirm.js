// Admin pages: a form with data-confirm="question" asks before it submits. (Not an inline
// onsubmit handler: the Content-Security-Policy allows scripts from this site's files only.)
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
