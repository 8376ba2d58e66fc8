"""The endpoints of the HTTP service, one router per job; :mod:`imgsearch.service` assembles them into the
application with its limits, keys, logging and error answers.

- :mod:`~imgsearch.routes.search`: searches by photo, vector and SKU, and a photo's vector;
- :mod:`~imgsearch.routes.events`: what shoppers did with the results;
- :mod:`~imgsearch.routes.probes`: liveness, readiness and metrics;
- :mod:`~imgsearch.routes.page`: the web page, its files, the catalogue's photos and categories, the API's
  documentation pages.

Each endpoint reads what it needs through dependencies (:mod:`~imgsearch.routes.runtime`), so that it can be
read, and tested, alone.
"""
