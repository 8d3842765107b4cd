"""``imaging-lifecycle receive``: run the DICOM C-STORE receiver in the foreground."""

from __future__ import annotations

HELP = "run the DICOM C-STORE receiver (writes into the landing folder; make run starts it)"


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, help="listen port (default IL_DICOM_PORT or 11112)")
    parser.add_argument("--ae-title", help="our AE title (default IL_DICOM_AE_TITLE or IL_ARCHIVE)")
    parser.add_argument("--allow", help="comma-separated calling AE titles allowed (default IL_DICOM_ALLOWED_AES)")


def run(args) -> int:
    import logging
    from dataclasses import replace

    from imaging_lifecycle.receiver import ReceiverConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = ReceiverConfig.from_env()
    if args.port:
        config = replace(config, port=args.port)
    if args.ae_title:
        config = replace(config, ae_title=args.ae_title)
    if args.allow is not None:
        config = replace(config, allowed_calling_aes=tuple(a for a in args.allow.split(",") if a))
    print(f"C-STORE receiver {config.ae_title} on {config.bind}:{config.port}, "
          f"allowed: {', '.join(config.allowed_calling_aes)}")
    serve(config)
    return 0
