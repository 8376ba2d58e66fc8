"""The web page of imgsearch serve: plain HTML, CSS and JavaScript, no build step."""
