from inflab.core.worker import main
from inflab.influence.service import REQUEST_MODEL, SERVICE, STAGE, make_handler

if __name__ == "__main__":
    main(SERVICE, STAGE, REQUEST_MODEL, make_handler)
